// WeakCLIP co-attention matching: CUDA kernels and the C launcher declared in coattn_kernel.h; README.md here lists
// what each kernel fuses.  No cuBLAS: the library only needs the CUDA runtime.

#include "coattn_kernel.h"
#include "weakclip_plugin_names.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace weakclip {
namespace {

// Weight table (generated from plugin_names.json) and compile-time checks that it names every tensor we use.

struct WeightEntry {
    const char* name;   // state-dict name; "{i}" marks a per-layer entry
    const char* shape;  // comma-separated symbols from {E, W, M}
};

constexpr WeightEntry kEntries[] = {WEAKCLIP_PACKED_WEIGHTS_INIT};
constexpr int kNumEntries = static_cast<int>(sizeof(kEntries) / sizeof(kEntries[0]));

constexpr bool str_eq(const char* a, const char* b) {
    while (*a != '\0' && *a == *b) {
        ++a;
        ++b;
    }
    return *a == *b;
}
constexpr bool has_layer_marker(const char* s) {
    for (; *s != '\0'; ++s) {
        if (s[0] == '{' && s[1] == 'i' && s[2] == '}') return true;
    }
    return false;
}
constexpr int find_entry(const char* name) {
    for (int i = 0; i < kNumEntries; ++i) {
        if (str_eq(kEntries[i].name, name)) return i;
    }
    return -1;
}

// Global tensors, in the order of the GlobalRole enum below.
constexpr const char* kGlobalNames[] = {
    "memory_proj.0.weight", "memory_proj.0.bias", "memory_proj.1.weight", "memory_proj.1.bias",
    "memory_proj.2.weight", "memory_proj.2.bias", "text_proj.0.weight",   "text_proj.0.bias",
    "text_proj.1.weight",   "text_proj.1.bias",   "text_out.0.weight",    "text_out.0.bias",
    "text_out.1.weight",    "text_out.1.bias",    "visual_out.0.weight",  "visual_out.0.bias",
    "visual_out.1.weight",  "visual_out.1.bias",  "gamma",                "beta"};
enum GlobalRole {
    MP0_W, MP0_B, MP1_W, MP1_B, MP2_W, MP2_B, TP0_W, TP0_B, TP1_W, TP1_B,
    TO0_W, TO0_B, TO1_W, TO1_B, VO0_W, VO0_B, VO1_W, VO1_B, GAMMA, BETA, kNumGlobal
};
// Per-layer tensors of the two stacks, in the order of the LayerRole enum below.
#define WEAKCLIP_LAYER_NAMES(stack)                                                                                \
    stack ".{i}.self_attn.q_proj.weight", stack ".{i}.self_attn.k_proj.weight", stack ".{i}.self_attn.v_proj.weight", \
        stack ".{i}.self_attn.proj.weight", stack ".{i}.self_attn.proj.bias", stack ".{i}.cross_attn.q_proj.weight",  \
        stack ".{i}.cross_attn.k_proj.weight", stack ".{i}.cross_attn.v_proj.weight",                              \
        stack ".{i}.cross_attn.proj.weight", stack ".{i}.cross_attn.proj.bias", stack ".{i}.norm1.weight",         \
        stack ".{i}.norm1.bias", stack ".{i}.norm2.weight", stack ".{i}.norm2.bias", stack ".{i}.norm3.weight",    \
        stack ".{i}.norm3.bias", stack ".{i}.mlp.0.weight", stack ".{i}.mlp.0.bias", stack ".{i}.mlp.3.weight",    \
        stack ".{i}.mlp.3.bias"
constexpr const char* kTextLayerNames[] = {WEAKCLIP_LAYER_NAMES("text_decoder")};
constexpr const char* kVisualLayerNames[] = {WEAKCLIP_LAYER_NAMES("visual_decoder")};
#undef WEAKCLIP_LAYER_NAMES
enum LayerRole {
    SA_Q, SA_K, SA_V, SA_P, SA_PB, CA_Q, CA_K, CA_V, CA_P, CA_PB,
    N1_W, N1_B, N2_W, N2_B, N3_W, N3_B, FC1_W, FC1_B, FC2_W, FC2_B, kNumLayerRoles
};
static_assert(sizeof(kGlobalNames) / sizeof(kGlobalNames[0]) == kNumGlobal, "global role table");
static_assert(sizeof(kTextLayerNames) / sizeof(kTextLayerNames[0]) == kNumLayerRoles, "layer role table");

constexpr bool all_roles_present() {
    for (const char* n : kGlobalNames) {
        const int e = find_entry(n);
        if (e < 0 || has_layer_marker(kEntries[e].name)) return false;
    }
    for (int r = 0; r < kNumLayerRoles; ++r) {
        if (find_entry(kTextLayerNames[r]) < 0 || find_entry(kVisualLayerNames[r]) < 0) return false;
    }
    return true;
}
static_assert(all_roles_present(),
              "engines/csrc/plugin_names.json `packed_weights` lacks a tensor the launcher needs (names are "
              "CoAttentionMatching state-dict keys); fix the JSON or this table");

// Position of entry `e`, layer `layer`, in the list expanded for `layers` layers: each maximal run of "{i}" entries
// is repeated layer-major.
int expanded_index(int e, int layer, int layers) {
    int pos = 0;
    int i = 0;
    while (i < kNumEntries) {
        const bool per_layer = has_layer_marker(kEntries[i].name);
        int j = i + 1;
        while (j < kNumEntries && has_layer_marker(kEntries[j].name) == per_layer) ++j;
        if (e >= i && e < j) return pos + (per_layer ? layer * (j - i) : 0) + (e - i);
        pos += (j - i) * (per_layer ? layers : 1);
        i = j;
    }
    return -1;
}

int expanded_count(int layers) {
    int n = 0;
    for (int i = 0; i < kNumEntries; ++i) n += has_layer_marker(kEntries[i].name) ? layers : 1;
    return n;
}

// Entry of expanded index `idx` (and its layer, -1 for a global tensor), or -1.
int entry_of_expanded(int idx, int layers, int* layer_out) {
    for (int e = 0; e < kNumEntries; ++e) {
        const bool per_layer = has_layer_marker(kEntries[e].name);
        for (int l = 0; l < (per_layer ? layers : 1); ++l) {
            if (expanded_index(e, l, layers) == idx) {
                *layer_out = per_layer ? l : -1;
                return e;
            }
        }
    }
    return -1;
}

int64_t shape_numel(const char* shape, int64_t E, int64_t W, int64_t M) {
    int64_t n = 1;
    for (const char* s = shape; *s != '\0'; ++s) {
        switch (*s) {
            case 'E': n *= E; break;
            case 'W': n *= W; break;
            case 'M': n *= M; break;
            case ',': case ' ': break;
            default: return -1;
        }
    }
    return n;
}

// Error reporting.

thread_local std::string g_last_error;

int fail(int status, const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    g_last_error = buf;
    return status;
}

int check_launch(const char* what) {
    const cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? WEAKCLIP_STATUS_OK
                            : fail(WEAKCLIP_STATUS_CUDA_ERROR, "CUDA error after %s: %s", what, cudaGetErrorString(e));
}

#define WEAKCLIP_TRY(expr)                        \
    do {                                          \
        const int status_ = (expr);               \
        if (status_ != WEAKCLIP_STATUS_OK) return status_; \
    } while (0)

// Device helpers.

using half = __half;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ half from_f<half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

constexpr float kLog2e = 1.4426950408889634f;

// LayerNorm over the last dim: y[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta; one warp per row.

constexpr int kLnRowsPerBlock = 8;

template <typename T>
__global__ void __launch_bounds__(256) layernorm_kernel(const T* x, int64_t ldx, T* y, int64_t ldy, const T* gamma,
                                                        const T* beta, int rows, int n, float eps) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * kLnRowsPerBlock + warp;
    if (row >= rows) return;  // warp-uniform: no block-level barrier below
    const T* xr = x + static_cast<int64_t>(row) * ldx;
    T* yr = y + static_cast<int64_t>(row) * ldy;
    float s = 0.f;
    for (int c = lane; c < n; c += 32) s += to_f(xr[c]);
    const float mean = warp_sum(s) / static_cast<float>(n);
    float v = 0.f;
    for (int c = lane; c < n; c += 32) {
        const float d = to_f(xr[c]) - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(warp_sum(v) / static_cast<float>(n) + eps);
    for (int c = lane; c < n; c += 32) {
        yr[c] = from_f<T>((to_f(xr[c]) - mean) * rstd * to_f(gamma[c]) + to_f(beta[c]));
    }
}

// Tokens from the encoder layout: V[b, 0, :] = g[b, :]; V[b, 1 + i, e] = F[b, e, i]   (i < h*w).
// 32x32 tiled transpose through shared memory; block (32, 8), grid (ceil(hw/32), ceil(E/32), B).

template <typename T>
__global__ void __launch_bounds__(256) gather_tokens_kernel(const T* g, const T* dense, T* tokens, int E, int hw) {
    __shared__ float tile[32][33];
    const int b = blockIdx.z;
    const int i0 = blockIdx.x * 32;
    const int e0 = blockIdx.y * 32;
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int64_t n_tok = 1 + static_cast<int64_t>(hw);
    for (int r = ty; r < 32; r += 8) {
        const int e = e0 + r;
        const int i = i0 + tx;
        tile[r][tx] = (e < E && i < hw) ? to_f(dense[(static_cast<int64_t>(b) * E + e) * hw + i]) : 0.f;
    }
    __syncthreads();
    for (int r = ty; r < 32; r += 8) {
        const int i = i0 + r;
        const int e = e0 + tx;
        if (i < hw && e < E) tokens[(static_cast<int64_t>(b) * n_tok + 1 + i) * E + e] = from_f<T>(tile[tx][r]);
    }
    if (blockIdx.x == 0 && ty == 0) {
        const int e = e0 + tx;
        if (e < E) tokens[static_cast<int64_t>(b) * n_tok * E + e] = g[static_cast<int64_t>(b) * E + e];
    }
}

// dst[b * n + j] = src[j] for b < batch (one row block broadcast over the batch).
template <typename T>
__global__ void __launch_bounds__(256) broadcast_kernel(const T* src, T* dst, int64_t n, int batch) {
    const int64_t total = n * batch;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        dst[idx] = src[idx % n];
    }
}

// GEMM  C[m, n] = epilogue(sum_k A[m, k] * W[n, k])   (A row-major (M, K), W = PyTorch Linear weight (N, K))
// epilogue(acc) = R[m', n] + colscale[n] * act(acc + bias[n]),  m' = m % res_mod when res_mod > 0 else m.
// Up to 3 groups (different A / W / bias / C / M, same N and K) run in one launch (blockIdx.z = group), e.g. the
// q, k, v projections.  R may alias C (in-place residual): each element is read and written by one thread.

template <typename T>
struct GemmGroup {
    const T* A;
    const T* W;
    const T* bias;  // may be null
    T* C;
    int M;
};

template <typename T>
struct GemmArgs {
    GemmGroup<T> g[3];
    int ngroups, N, K;
    int gelu;  // 1: GELU(erf) after the bias
    int vec;   // 1: 16-byte vector loads are legal (fp16 path)
    int res_mod;
    int64_t lda, ldw, ldc, ldr;
    const T* R;         // residual, may be null (only with ngroups == 1)
    const T* colscale;  // per-output-channel scale, may be null
};

template <typename T>
__device__ __forceinline__ void gemm_store(const GemmArgs<T>& a, const GemmGroup<T>& G, int m, int n, float acc) {
    if (G.bias != nullptr) acc += to_f(G.bias[n]);
    if (a.gelu) acc = gelu_erf(acc);
    if (a.colscale != nullptr) acc *= to_f(a.colscale[n]);
    if (a.R != nullptr) acc += to_f(a.R[(a.res_mod > 0 ? m % a.res_mod : m) * a.ldr + n]);
    G.C[static_cast<int64_t>(m) * a.ldc + n] = from_f<T>(acc);
}

// SIMT tiles (the fp32 path; exact fp32 FMA): block 64x64, k-step 16, 256 threads each owning a 4x4 output grid
// strided by 16 (conflict-free shared reads, coalesced stores).
constexpr int kSimtBM = 64, kSimtBN = 64, kSimtBK = 16;

template <typename T>
__global__ void __launch_bounds__(256) gemm_simt_kernel(GemmArgs<T> a) {
    __shared__ float As[kSimtBK][kSimtBM + 4];
    __shared__ float Ws[kSimtBK][kSimtBN + 4];
    const GemmGroup<T> G = a.g[blockIdx.z];
    const int m0 = blockIdx.y * kSimtBM;
    const int n0 = blockIdx.x * kSimtBN;
    if (m0 >= G.M) return;  // block-uniform
    const int tid = threadIdx.x;
    const int tx = tid & 15;
    const int ty = tid >> 4;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < a.K; k0 += kSimtBK) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int idx = tid + 256 * e;
            const int r = idx >> 4;  // 0..63
            const int c = idx & 15;  // 0..15
            const int k = k0 + c;
            const int m = m0 + r;
            const int n = n0 + r;
            As[c][r] = (m < G.M && k < a.K) ? to_f(G.A[static_cast<int64_t>(m) * a.lda + k]) : 0.f;
            Ws[c][r] = (n < a.N && k < a.K) ? to_f(G.W[static_cast<int64_t>(n) * a.ldw + k]) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kSimtBK; ++kk) {
            float av[4], wv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) wv[j] = Ws[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], wv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty + 16 * i;
        if (m >= G.M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + tx + 16 * j;
            if (n < a.N) gemm_store(a, G, m, n, acc[i][j]);
        }
    }
}

// Tensor-core tiles (the fp16 path): block 64x64, k-step 32, 4 warps each owning a 32x32 quadrant (2x2 WMMA
// 16x16x16 fragments, fp32 accumulators); the accumulators go through shared memory for the fused epilogue.
constexpr int kWmmaBM = 64, kWmmaBN = 64, kWmmaBK = 32;
constexpr int kWmmaLdAB = kWmmaBK + 8;  // halves; multiple of 8 (WMMA ldm rule), rows 80 bytes apart
constexpr int kWmmaLdC = kWmmaBN + 4;   // floats; multiple of 4

__global__ void __launch_bounds__(128) gemm_wmma_kernel(GemmArgs<half> a) {
    using namespace nvcuda;
    __shared__ __align__(128) half As[kWmmaBM * kWmmaLdAB];
    __shared__ __align__(128) half Ws[kWmmaBN * kWmmaLdAB];
    __shared__ __align__(128) float Cs[kWmmaBM * kWmmaLdC];
    const GemmGroup<half> G = a.g[blockIdx.z];
    const int m0 = blockIdx.y * kWmmaBM;
    const int n0 = blockIdx.x * kWmmaBN;
    if (m0 >= G.M) return;  // block-uniform
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int wm = (warp >> 1) * 32;
    const int wn = (warp & 1) * 32;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    for (int k0 = 0; k0 < a.K; k0 += kWmmaBK) {
        if (a.vec) {
            // 64 rows x 4 vectors of 8 halves per operand; 2 vectors per thread each.
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int idx = tid + 128 * e;
                const int r = idx >> 2;
                const int c8 = (idx & 3) * 8;
                const int k = k0 + c8;
                const int m = m0 + r;
                const int n = n0 + r;
                uint4 va = make_uint4(0u, 0u, 0u, 0u);
                uint4 vw = make_uint4(0u, 0u, 0u, 0u);
                if (m < G.M && k < a.K) va = *reinterpret_cast<const uint4*>(G.A + static_cast<int64_t>(m) * a.lda + k);
                if (n < a.N && k < a.K) vw = *reinterpret_cast<const uint4*>(G.W + static_cast<int64_t>(n) * a.ldw + k);
                *reinterpret_cast<uint4*>(&As[r * kWmmaLdAB + c8]) = va;
                *reinterpret_cast<uint4*>(&Ws[r * kWmmaLdAB + c8]) = vw;
            }
        } else {
            const half zero = __float2half_rn(0.f);
            for (int idx = tid; idx < kWmmaBM * kWmmaBK; idx += 128) {
                const int r = idx / kWmmaBK;
                const int c = idx % kWmmaBK;
                const int k = k0 + c;
                const int m = m0 + r;
                const int n = n0 + r;
                As[r * kWmmaLdAB + c] = (m < G.M && k < a.K) ? G.A[static_cast<int64_t>(m) * a.lda + k] : zero;
                Ws[r * kWmmaLdAB + c] = (n < a.N && k < a.K) ? G.W[static_cast<int64_t>(n) * a.ldw + k] : zero;
            }
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kWmmaBK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &As[(wm + 16 * i) * kWmmaLdAB + kk], kWmmaLdAB);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &Ws[(wn + 16 * j) * kWmmaLdAB + kk], kWmmaLdAB);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(&Cs[(wm + 16 * i) * kWmmaLdC + wn + 16 * j], acc[i][j], kWmmaLdC,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int idx = tid; idx < kWmmaBM * kWmmaBN; idx += 128) {
        const int r = idx / kWmmaBN;
        const int c = idx % kWmmaBN;
        const int m = m0 + r;
        const int n = n0 + c;
        if (m < G.M && n < a.N) gemm_store(a, G, m, n, Cs[r * kWmmaLdC + c]);
    }
}

// Attention  o = softmax(q k^T * scale) v  per (batch, head); q (B, Nq, H, D), k/v (B, Nk, H, D) with row strides.

template <typename T>
struct FlashArgs {
    const T *q, *k, *v;
    T* o;
    int nq, nk;
    int64_t ldq, ldk, ldv, ldo;  // elements between consecutive tokens
    int64_t qbs, kbs, vbs, obs;  // elements between batches (0 = broadcast)
    float scale_log2;            // scale * log2(e): softmax is evaluated with exp2
};

// SIMT kernel: 4 threads per query row, each owning D/4 of the head dims (float4 groups interleaved so a quad reads
// 64 contiguous bytes of a key row: conflict-free, broadcast across the 8 queries of a warp); K/V tiles of BK keys
// in shared memory (fp32); keys processed in chunks of 16: scores -> chunk max -> one rescale -> accumulate.
constexpr int kSimtFlashBQ = 32;  // queries per block: 128 threads, 4 per query

template <typename T, int D>
__global__ void __launch_bounds__(128) flash_attn_simt_kernel(FlashArgs<T> a) {
    constexpr int BK = D <= 64 ? 64 : 32;  // keys per shared tile (32 KiB for K+V)
    constexpr int CH = 16;                 // keys per online-softmax step
    constexpr int NV = D / 16;             // float4 groups per thread
    static_assert(D % 16 == 0 && BK % CH == 0, "head dim must be a multiple of 16");
    __shared__ __align__(16) float Ks[BK][D];
    __shared__ __align__(16) float Vs[BK][D];

    const int tid = threadIdx.x;
    const int part = tid & 3;
    const int qi = blockIdx.x * kSimtFlashBQ + (tid >> 2);
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const bool qvalid = qi < a.nq;

    const T* qrow = a.q + b * a.qbs + static_cast<int64_t>(qi) * a.ldq + h * D;
    const T* kbase = a.k + b * a.kbs + h * D;
    const T* vbase = a.v + b * a.vbs + h * D;

    float qr[NV * 4];
    float acc[NV * 4] = {};
#pragma unroll
    for (int i = 0; i < NV; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) qr[4 * i + e] = qvalid ? to_f(qrow[16 * i + 4 * part + e]) * a.scale_log2 : 0.f;
    float m_run = -INFINITY;
    float l_run = 0.f;

    for (int k0 = 0; k0 < a.nk; k0 += BK) {
        __syncthreads();  // the previous tile is consumed
        for (int idx = tid; idx < BK * D; idx += 128) {
            const int r = idx / D;
            const int c = idx % D;
            const int j = k0 + r;
            const bool ok = j < a.nk;
            Ks[r][c] = ok ? to_f(kbase[static_cast<int64_t>(j) * a.ldk + c]) : 0.f;
            Vs[r][c] = ok ? to_f(vbase[static_cast<int64_t>(j) * a.ldv + c]) : 0.f;
        }
        __syncthreads();
        const int nk_tile = min(BK, a.nk - k0);  // block-uniform
        for (int c0 = 0; c0 < nk_tile; c0 += CH) {
            float s[CH];
#pragma unroll
            for (int c = 0; c < CH; ++c) {
                float p = 0.f;
#pragma unroll
                for (int i = 0; i < NV; ++i) {
                    const float4 kv = *reinterpret_cast<const float4*>(&Ks[c0 + c][16 * i + 4 * part]);
                    p = fmaf(qr[4 * i + 0], kv.x, p);
                    p = fmaf(qr[4 * i + 1], kv.y, p);
                    p = fmaf(qr[4 * i + 2], kv.z, p);
                    p = fmaf(qr[4 * i + 3], kv.w, p);
                }
                p += __shfl_xor_sync(0xffffffffu, p, 1);
                p += __shfl_xor_sync(0xffffffffu, p, 2);
                s[c] = (c0 + c < nk_tile) ? p : -INFINITY;
            }
            float m_new = m_run;
#pragma unroll
            for (int c = 0; c < CH; ++c) m_new = fmaxf(m_new, s[c]);  // finite: key c0 is valid
            const float alpha = exp2f(m_run - m_new);                   // 0 on the first chunk (m_run = -inf)
            l_run *= alpha;
#pragma unroll
            for (int d = 0; d < NV * 4; ++d) acc[d] *= alpha;
#pragma unroll
            for (int c = 0; c < CH; ++c) {
                const float p = exp2f(s[c] - m_new);  // masked keys: exp2(-inf) = 0
                l_run += p;
#pragma unroll
                for (int i = 0; i < NV; ++i) {
                    const float4 vv = *reinterpret_cast<const float4*>(&Vs[c0 + c][16 * i + 4 * part]);
                    acc[4 * i + 0] = fmaf(p, vv.x, acc[4 * i + 0]);
                    acc[4 * i + 1] = fmaf(p, vv.y, acc[4 * i + 1]);
                    acc[4 * i + 2] = fmaf(p, vv.z, acc[4 * i + 2]);
                    acc[4 * i + 3] = fmaf(p, vv.w, acc[4 * i + 3]);
                }
            }
            m_run = m_new;
        }
    }
    if (qvalid) {
        const float inv = 1.f / l_run;
        T* orow = a.o + b * a.obs + static_cast<int64_t>(qi) * a.ldo + h * D;
#pragma unroll
        for (int i = 0; i < NV; ++i)
#pragma unroll
            for (int e = 0; e < 4; ++e) orow[16 * i + 4 * part + e] = from_f<T>(acc[4 * i + e] * inv);
    }
}

// Tensor-core kernel (fp16, D in {16, 32, 64}): 64 queries per block, 4 warps x 16 query rows; key tiles of 32.
// Per tile and warp: S = Q K^T (WMMA, fp32) -> shared; online softmax on S rows in fp32 (2 lanes per row);
// P (fp16) -> shared; O (fp32, shared) rescaled by the row factor, then O += P V (WMMA, accumulator loaded from and
// stored back to shared memory).  The Q staging buffer is reused for S after Q is in registers (fragments).
constexpr int kWmmaFlashBQ = 64;

template <int D>
__global__ void __launch_bounds__(128) flash_attn_wmma_kernel(FlashArgs<half> a) {
    using namespace nvcuda;
    constexpr int BQ = kWmmaFlashBQ, BK = 32;
    constexpr int LDH = D + 8, LDS = BK + 4, LDP = BK + 8, LDO = D + 4;  // row pitches: Q/K/V, S, P, O
    constexpr int QS_BYTES = BQ * LDH * 2 > BQ * LDS * 4 ? BQ * LDH * 2 : BQ * LDS * 4;  // fp16 Q, later fp32 S
    static_assert(D % 16 == 0 && D <= 64, "WMMA flash kernel: D in {16, 32, 64}");
    static_assert(QS_BYTES + 2 * BK * LDH * 2 + BQ * LDP * 2 + BQ * LDO * 4 <= 48 * 1024, "static shared memory limit");
    __shared__ __align__(128) unsigned char qs_raw[QS_BYTES];
    __shared__ __align__(128) half Ks[BK * LDH];
    __shared__ __align__(128) half Vs[BK * LDH];
    __shared__ __align__(128) half Ps[BQ * LDP];
    __shared__ __align__(128) float Os[BQ * LDO];
    half* Qs = reinterpret_cast<half*>(qs_raw);
    float* Ss = reinterpret_cast<float*>(qs_raw);

    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int q0 = blockIdx.x * BQ;
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    const half zero = __float2half_rn(0.f);

    const half* qbase = a.q + b * a.qbs + h * D;
    const half* kbase = a.k + b * a.kbs + h * D;
    const half* vbase = a.v + b * a.vbs + h * D;

    for (int idx = tid; idx < BQ * D; idx += 128) {
        const int r = idx / D;
        const int c = idx % D;
        const int qi = q0 + r;
        Qs[r * LDH + c] = qi < a.nq ? qbase[static_cast<int64_t>(qi) * a.ldq + c] : zero;
    }
    for (int idx = tid; idx < BQ * LDO; idx += 128) Os[idx] = 0.f;
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> qf[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) wmma::load_matrix_sync(qf[kk], &Qs[(16 * warp) * LDH + 16 * kk], LDH);

    // softmax bookkeeping: lane pair (2r, 2r+1) owns row 16*warp + r; each lane half of the columns.
    const int r_local = lane >> 1;
    const int hf = lane & 1;
    const int row = 16 * warp + r_local;
    float m_run = -INFINITY;
    float l_run = 0.f;

    for (int k0 = 0; k0 < a.nk; k0 += BK) {
        __syncthreads();  // previous tile consumed; on the first pass: every warp holds its Q fragments
        for (int idx = tid; idx < BK * D; idx += 128) {
            const int r = idx / D;
            const int c = idx % D;
            const int j = k0 + r;
            const bool ok = j < a.nk;
            Ks[r * LDH + c] = ok ? kbase[static_cast<int64_t>(j) * a.ldk + c] : zero;
            Vs[r * LDH + c] = ok ? vbase[static_cast<int64_t>(j) * a.ldv + c] : zero;
        }
        __syncthreads();

        // S (16 x BK) for this warp's rows.
#pragma unroll
        for (int nb = 0; nb < BK / 16; ++nb) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sf;
            wmma::fill_fragment(sf, 0.f);
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> kf;  // K^T
                wmma::load_matrix_sync(kf, &Ks[(16 * nb) * LDH + 16 * kk], LDH);
                wmma::mma_sync(sf, qf[kk], kf, sf);
            }
            wmma::store_matrix_sync(&Ss[(16 * warp) * LDS + 16 * nb], sf, LDS, wmma::mem_row_major);
        }
        __syncwarp();

        // Online softmax on row `row`, columns [16*hf, 16*hf + 16).
        float sv[16];
        float mx = -INFINITY;
#pragma unroll
        for (int c = 0; c < 16; ++c) {
            const int j = k0 + 16 * hf + c;
            sv[c] = j < a.nk ? Ss[row * LDS + 16 * hf + c] * a.scale_log2 : -INFINITY;
            mx = fmaxf(mx, sv[c]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        const float m_new = fmaxf(m_run, mx);  // finite: key k0 (column 0, lane hf = 0) is valid
        const float alpha = exp2f(m_run - m_new);
        float sum = 0.f;
#pragma unroll
        for (int c = 0; c < 16; ++c) {
            const float p = exp2f(sv[c] - m_new);
            sum += p;
            Ps[row * LDP + 16 * hf + c] = __float2half_rn(p);
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        l_run = l_run * alpha + sum;
        m_run = m_new;
#pragma unroll
        for (int c = 0; c < D / 2; ++c) Os[row * LDO + hf * (D / 2) + c] *= alpha;
        __syncwarp();

        // O (16 x D) += P (16 x BK) V (BK x D)
#pragma unroll
        for (int nb = 0; nb < D / 16; ++nb) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> of;
            wmma::load_matrix_sync(of, &Os[(16 * warp) * LDO + 16 * nb], LDO, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> pf;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> vf;
                wmma::load_matrix_sync(pf, &Ps[(16 * warp) * LDP + 16 * kk], LDP);
                wmma::load_matrix_sync(vf, &Vs[(16 * kk) * LDH + 16 * nb], LDH);
                wmma::mma_sync(of, pf, vf, of);
            }
            wmma::store_matrix_sync(&Os[(16 * warp) * LDO + 16 * nb], of, LDO, wmma::mem_row_major);
        }
        __syncwarp();
    }

    const int qi = q0 + row;
    if (qi < a.nq) {
        const float inv = 1.f / l_run;
        half* orow = a.o + b * a.obs + static_cast<int64_t>(qi) * a.ldo + h * D;
#pragma unroll
        for (int c = 0; c < D / 2; ++c) {
            const int d = hf * (D / 2) + c;
            orow[d] = __float2half_rn(Os[row * LDO + d] * inv);
        }
    }
}

// Score map  S[b, k, i] = <v_i, t_k> / (max(|v_i|, eps) max(|t_k|, eps)),  (B, K, h*w) written directly.
// Block: 64 tokens x 16 classes, 256 threads (token = tid % 64, classes 4*(tid / 64) .. +3); E in chunks of 32
// staged (transposed) in shared memory; the norms are accumulated in the same pass as the dot products.

template <typename T>
struct ScoreArgs {
    const T* v;
    const T* t;
    T* s;
    int K, E, hw, token_offset;
    int64_t vbs, tbs;
};

constexpr int kScoreBT = 64, kScoreBC = 16, kScoreCE = 32;

template <typename T>
__global__ void __launch_bounds__(256) score_map_kernel(ScoreArgs<T> a) {
    __shared__ float Vs[kScoreCE][kScoreBT + 1];
    __shared__ float Ts[kScoreCE][kScoreBC + 1];
    const int tid = threadIdx.x;
    const int tx = tid & 63;
    const int ty = tid >> 6;
    const int b = blockIdx.z;
    const int i0 = blockIdx.x * kScoreBT;
    const int k0 = blockIdx.y * kScoreBC;
    const T* vb = a.v + b * a.vbs + static_cast<int64_t>(a.token_offset) * a.E;
    const T* tb = a.t + b * a.tbs;
    float dot[4] = {0.f, 0.f, 0.f, 0.f};
    float tn[4] = {0.f, 0.f, 0.f, 0.f};
    float vn = 0.f;
    for (int e0 = 0; e0 < a.E; e0 += kScoreCE) {
        __syncthreads();
#pragma unroll
        for (int r = 0; r < (kScoreBT * kScoreCE) / 256; ++r) {
            const int idx = tid + 256 * r;
            const int tok = idx / kScoreCE;
            const int c = idx % kScoreCE;
            const int i = i0 + tok;
            const int e = e0 + c;
            Vs[c][tok] = (i < a.hw && e < a.E) ? to_f(vb[static_cast<int64_t>(i) * a.E + e]) : 0.f;
        }
#pragma unroll
        for (int r = 0; r < (kScoreBC * kScoreCE) / 256; ++r) {
            const int idx = tid + 256 * r;
            const int kk = idx / kScoreCE;
            const int c = idx % kScoreCE;
            const int k = k0 + kk;
            const int e = e0 + c;
            Ts[c][kk] = (k < a.K && e < a.E) ? to_f(tb[static_cast<int64_t>(k) * a.E + e]) : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int c = 0; c < kScoreCE; ++c) {
            const float v = Vs[c][tx];
            vn = fmaf(v, v, vn);
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const float t = Ts[c][4 * ty + j];
                dot[j] = fmaf(v, t, dot[j]);
                tn[j] = fmaf(t, t, tn[j]);
            }
        }
    }
    const int i = i0 + tx;
    if (i >= a.hw) return;
    const float vinv = 1.f / fmaxf(sqrtf(vn), 1e-12f);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int k = k0 + 4 * ty + j;
        if (k < a.K) {
            const float tinv = 1.f / fmaxf(sqrtf(tn[j]), 1e-12f);
            a.s[(static_cast<int64_t>(b) * a.K + k) * a.hw + i] = from_f<T>(dot[j] * vinv * tinv);
        }
    }
}

// Host-side launch helpers.

unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

bool supported_head_dim(int d) { return d == 16 || d == 32 || d == 64 || d == 128; }

template <typename T>
int launch_layernorm(const T* x, int64_t ldx, T* y, int64_t ldy, const T* g, const T* b, int rows, int n, float eps,
                     cudaStream_t stream) {
    if (rows <= 0) return WEAKCLIP_STATUS_OK;
    const dim3 grid(ceil_div(rows, kLnRowsPerBlock));
    layernorm_kernel<T><<<grid, 256, 0, stream>>>(x, ldx, y, ldy, g, b, rows, n, eps);
    return check_launch("layernorm_kernel");
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <typename T>
int launch_gemm(GemmArgs<T> a, cudaStream_t stream) {
    int max_m = 0;
    for (int i = 0; i < a.ngroups; ++i) max_m = std::max(max_m, a.g[i].M);
    if (max_m == 0 || a.N == 0) return WEAKCLIP_STATUS_OK;
    if (a.ngroups > 1 && a.R != nullptr) return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "grouped GEMM with residual");
    for (int i = a.ngroups; i < 3; ++i) a.g[i] = a.g[0];
    if constexpr (sizeof(T) == 2) {
        a.vec = a.K % 8 == 0 && a.lda % 8 == 0 && a.ldw % 8 == 0;
        for (int i = 0; i < a.ngroups; ++i) a.vec = a.vec && aligned16(a.g[i].A) && aligned16(a.g[i].W);
        const dim3 grid(ceil_div(a.N, kWmmaBN), ceil_div(max_m, kWmmaBM), a.ngroups);
        gemm_wmma_kernel<<<grid, 128, 0, stream>>>(a);
        return check_launch("gemm_wmma_kernel");
    } else {
        a.vec = 0;
        const dim3 grid(ceil_div(a.N, kSimtBN), ceil_div(max_m, kSimtBM), a.ngroups);
        gemm_simt_kernel<T><<<grid, 256, 0, stream>>>(a);
        return check_launch("gemm_simt_kernel");
    }
}

// Single Linear: C = epilogue(A W^T), A (M, K) contiguous, W (N, K), C (M, N) contiguous.
template <typename T>
int linear(const T* A, int M, int K, const T* W, const T* bias, int N, T* C, cudaStream_t stream, int gelu = 0,
           const T* residual = nullptr, int res_mod = 0, int64_t ldr = 0, const T* colscale = nullptr) {
    const int64_t ldr_or_n = residual != nullptr ? (ldr > 0 ? ldr : N) : 0;
    return launch_gemm(GemmArgs<T>{{GemmGroup<T>{A, W, bias, C, M}}, 1, N, K, gelu, 0, res_mod, K, K, N, ldr_or_n,
                                   residual, colscale},
                       stream);
}

template <typename T, int D>
int launch_flash_d(const FlashArgs<T>& a, int batch, int heads, cudaStream_t stream) {
    if constexpr (sizeof(T) == 2 && D <= 64) {
        const dim3 grid(ceil_div(a.nq, kWmmaFlashBQ), heads, batch);
        flash_attn_wmma_kernel<D><<<grid, 128, 0, stream>>>(a);
        return check_launch("flash_attn_wmma_kernel");
    } else {
        const dim3 grid(ceil_div(a.nq, kSimtFlashBQ), heads, batch);
        flash_attn_simt_kernel<T, D><<<grid, 128, 0, stream>>>(a);
        return check_launch("flash_attn_simt_kernel");
    }
}

template <typename T>
int launch_flash(const FlashArgs<T>& a, int batch, int heads, int head_dim, cudaStream_t stream) {
    if (batch > 65535 || heads > 65535) return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "batch/heads > 65535");
    switch (head_dim) {
        case 16: return launch_flash_d<T, 16>(a, batch, heads, stream);
        case 32: return launch_flash_d<T, 32>(a, batch, heads, stream);
        case 64: return launch_flash_d<T, 64>(a, batch, heads, stream);
        case 128: return launch_flash_d<T, 128>(a, batch, heads, stream);
        default: return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "head dim %d not in {16, 32, 64, 128}", head_dim);
    }
}

template <typename T>
int launch_score_map(const ScoreArgs<T>& a, int batch, cudaStream_t stream) {
    const dim3 grid(ceil_div(a.hw, kScoreBT), ceil_div(a.K, kScoreBC), batch);
    score_map_kernel<T><<<grid, 256, 0, stream>>>(a);
    return check_launch("score_map_kernel");
}

// The full forward.

template <typename T>
struct LayerW {
    const T* w[kNumLayerRoles];
};

template <typename T>
struct AllW {
    const T* g[kNumGlobal];
    std::vector<LayerW<T>> text, visual;
};

struct Dims {
    int64_t B, N, K, E, W, M, H, Dh, L, hw;
    int64_t Rv, Rt, Rmax;
};

Dims make_dims(const WeakclipCoAttnParams& p) {
    const int64_t B = p.batch, K = p.num_classes, hw = static_cast<int64_t>(p.grid_h) * p.grid_w;
    const int64_t Dh = p.heads > 0 ? p.width / p.heads : 0;
    return Dims{B, 1 + hw, K, p.embed_dim, p.width, p.mlp_hidden, p.heads, Dh, p.layers, hw,
                B * (1 + hw), B * K, std::max(B * (1 + hw), B * K)};
}

int validate_dims(const WeakclipCoAttnParams& p) {
    if (p.version != WEAKCLIP_COATTN_PARAMS_VERSION) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "params.version %d != %d (rebuild / update the caller)",
                    p.version, WEAKCLIP_COATTN_PARAMS_VERSION);
    }
    if (p.dtype != WEAKCLIP_FP32 && p.dtype != WEAKCLIP_FP16) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "dtype %d is neither fp32 (0) nor fp16 (1)", p.dtype);
    }
    if (p.batch < 1 || p.grid_h < 1 || p.grid_w < 1 || p.num_classes < 1 || p.embed_dim < 1 || p.width < 1 ||
        p.heads < 1 || p.layers < 0 || p.mlp_hidden < 1) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT,
                    "bad dims: B=%d h=%d w=%d K=%d E=%d W=%d heads=%d layers=%d M=%d", p.batch, p.grid_h, p.grid_w,
                    p.num_classes, p.embed_dim, p.width, p.heads, p.layers, p.mlp_hidden);
    }
    if (p.width % p.heads != 0 || !supported_head_dim(p.width / p.heads)) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "width %d / heads %d: head dim must be 16, 32, 64 or 128",
                    p.width, p.heads);
    }
    if (p.batch > 65535) return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "batch %d > 65535", p.batch);
    return WEAKCLIP_STATUS_OK;
}

// Workspace regions (bytes, each 256-aligned).
struct Plan {
    size_t vtok, lnE, h, vstate, tproj, tstate, q, k, v, o, mlp, tstar, total;
};

size_t align256(size_t x) { return (x + 255) & ~static_cast<size_t>(255); }

Plan make_plan(const WeakclipCoAttnParams& p) {
    const Dims d = make_dims(p);
    const size_t es = p.dtype == WEAKCLIP_FP16 ? 2 : 4;
    const bool split = p.visual == nullptr;
    Plan pl{};
    size_t off = 0;
    auto take = [&](int64_t elems) {
        const size_t at = off;
        off += align256(static_cast<size_t>(elems) * es);
        return at;
    };
    pl.vtok = take(split ? d.Rv * d.E : 0);
    pl.lnE = take(std::max(d.Rv, d.K) * d.E);  // LN(V) / LN(T); later V* when no v_star output is given
    pl.h = take(d.Rmax * d.W);                 // LayerNorm outputs, memory_proj linear output
    pl.vstate = take(d.Rv * d.W);              // V', then the image->text stack state (in place)
    pl.tproj = take(d.K * d.W);                // T' (shared by the batch): memory of the image->text stack
    pl.tstate = take(d.Rt * d.W);              // text->image stack state
    for (size_t* qkvo : {&pl.q, &pl.k, &pl.v, &pl.o}) *qkvo = take(d.Rmax * d.W);
    pl.mlp = take(d.Rmax * d.M);
    pl.tstar = take(p.t_star == nullptr ? d.Rt * d.E : 0);
    pl.total = off;
    return pl;
}

template <typename T>
struct Bufs {
    T *h, *q, *k, *v, *o, *mlp;
};

// The weights of one attention sub-block of a decoder layer: its LayerNorm and the q / k / v / output projections.
struct AttnRoles {
    int ln_w, ln_b, q, k, v, proj, proj_b;
};
constexpr AttnRoles kSelfAttn{N1_W, N1_B, SA_Q, SA_K, SA_V, SA_P, SA_PB};
constexpr AttnRoles kCrossAttn{N2_W, N2_B, CA_Q, CA_K, CA_V, CA_P, CA_PB};

// x += Attn(LN x, kv) in place on x (B, nq, W), with the weights `r` of layer `lw`.  kv == nullptr: self-attention
// (keys and values from LN x itself, nk = nq).  Otherwise cross-attention on kv (B or 1, nk, W) with a batch stride
// of kv_bs_rows rows (0: one memory shared by the batch) and kv_rows rows in all.
template <typename T>
int attention_block(const LayerW<T>& lw, const AttnRoles& r, T* x, int64_t nq, const T* kv, int64_t nk,
                    int64_t kv_bs_rows, int64_t kv_rows, const Dims& d, float eps, const Bufs<T>& buf,
                    cudaStream_t stream) {
    const int rows = static_cast<int>(d.B * nq);
    const int W = static_cast<int>(d.W);
    const float scale_log2 = kLog2e / std::sqrt(static_cast<float>(d.Dh));
    const auto* w = lw.w;

    WEAKCLIP_TRY(launch_layernorm<T>(x, W, buf.h, W, w[r.ln_w], w[r.ln_b], rows, W, eps, stream));
    if (kv == nullptr) {
        kv = buf.h;
        nk = nq;
        kv_bs_rows = nq;
        kv_rows = rows;
    }
    const int kvr = static_cast<int>(kv_rows);
    const GemmGroup<T> q{buf.h, w[r.q], nullptr, buf.q, rows}, k{kv, w[r.k], nullptr, buf.k, kvr};
    const GemmGroup<T> v{kv, w[r.v], nullptr, buf.v, kvr};
    WEAKCLIP_TRY(launch_gemm(GemmArgs<T>{{q, k, v}, 3, W, W, 0, 0, 0, W, W, W, 0, nullptr, nullptr}, stream));
    const FlashArgs<T> f{buf.q, buf.k, buf.v, buf.o, static_cast<int>(nq), static_cast<int>(nk), W, W, W, W,
                         nq * W, kv_bs_rows * W, kv_bs_rows * W, nq * W, scale_log2};
    WEAKCLIP_TRY(launch_flash(f, static_cast<int>(d.B), static_cast<int>(d.H), static_cast<int>(d.Dh), stream));
    return linear<T>(buf.o, rows, W, w[r.proj], w[r.proj_b], W, x, stream, 0, x);
}

// One decoder layer, in place on x (B, nq, W); memory (B or 1, nm, W) with batch stride mem_bs_rows rows (0: shared).
template <typename T>
int run_layer(const LayerW<T>& lw, T* x, const T* mem, int64_t nq, int64_t nm, int64_t mem_bs_rows,
              int64_t mem_rows, const Dims& d, float eps, const Bufs<T>& buf, cudaStream_t stream) {
    const int rows = static_cast<int>(d.B * nq);
    const int W = static_cast<int>(d.W);
    const auto* w = lw.w;
    WEAKCLIP_TRY(attention_block<T>(lw, kSelfAttn, x, nq, nullptr, 0, 0, 0, d, eps, buf, stream));  // x += SelfAttn
    WEAKCLIP_TRY(attention_block<T>(lw, kCrossAttn, x, nq, mem, nm, mem_bs_rows, mem_rows, d, eps, buf, stream));

    // x += MLP(LN3 x)
    WEAKCLIP_TRY(launch_layernorm<T>(x, W, buf.h, W, w[N3_W], w[N3_B], rows, W, eps, stream));
    WEAKCLIP_TRY(linear<T>(buf.h, rows, W, w[FC1_W], w[FC1_B], static_cast<int>(d.M), buf.mlp, stream, 1));
    return linear<T>(buf.mlp, rows, static_cast<int>(d.M), w[FC2_W], w[FC2_B], W, x, stream, 0, x);
}

template <typename T>
int resolve_weights(const WeakclipCoAttnParams& p, AllW<T>* out) {
    const int L = p.layers;
    const int expected = expanded_count(L);
    if (p.weights == nullptr || p.num_weights != expected) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "weights: expected %d pointers for %d layers, got %d%s",
                    expected, L, p.num_weights, p.weights == nullptr ? " (null array)" : "");
    }
    for (int i = 0; i < p.num_weights; ++i) {
        if (p.weights[i] == nullptr) {
            int layer = -1;
            const int e = entry_of_expanded(i, L, &layer);
            return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "weight %d (%s, layer %d) is null", i,
                        e >= 0 ? kEntries[e].name : "?", layer);
        }
    }
    auto at = [&](const char* name, int layer) {
        return static_cast<const T*>(p.weights[expanded_index(find_entry(name), layer < 0 ? 0 : layer, L)]);
    };
    for (int r = 0; r < kNumGlobal; ++r) out->g[r] = at(kGlobalNames[r], -1);
    out->text.resize(L);
    out->visual.resize(L);
    for (int i = 0; i < L; ++i) {
        for (int r = 0; r < kNumLayerRoles; ++r) {
            out->text[i].w[r] = at(kTextLayerNames[r], i);
            out->visual[i].w[r] = at(kVisualLayerNames[r], i);
        }
    }
    return WEAKCLIP_STATUS_OK;
}

template <typename T>
int forward(const WeakclipCoAttnParams& p, cudaStream_t stream) {
    const Dims d = make_dims(p);
    const Plan pl = make_plan(p);
    if (p.workspace == nullptr || p.workspace_size < pl.total) {
        return fail(WEAKCLIP_STATUS_WORKSPACE_TOO_SMALL, "workspace %zu bytes < needed %zu", p.workspace_size,
                    pl.total);
    }
    const bool split = p.visual == nullptr;
    if (split && (p.global_emb == nullptr || p.dense == nullptr)) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "give either visual tokens or both global_emb and dense");
    }
    if (!split && (p.global_emb != nullptr || p.dense != nullptr)) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "visual tokens and global_emb/dense are mutually exclusive");
    }
    if (p.text == nullptr || p.score == nullptr) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "text and score must be non-null");
    }
    if (d.Rmax > 0x7fffffff / std::max<int64_t>(1, std::max(d.M, d.E))) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "problem too large for 32-bit row indexing");
    }
    AllW<T> w;
    WEAKCLIP_TRY(resolve_weights<T>(p, &w));

    char* ws = static_cast<char*>(p.workspace);
    auto buf_at = [&](size_t off) { return reinterpret_cast<T*>(ws + off); };
    const Bufs<T> buf{buf_at(pl.h), buf_at(pl.q), buf_at(pl.k), buf_at(pl.v), buf_at(pl.o), buf_at(pl.mlp)};
    T* lnE = buf_at(pl.lnE);
    T* vstate = buf_at(pl.vstate);
    T* tproj = buf_at(pl.tproj);
    T* tstate = buf_at(pl.tstate);
    T* tstar = p.t_star != nullptr ? static_cast<T*>(p.t_star) : buf_at(pl.tstar);
    T* vstar = p.v_star != nullptr ? static_cast<T*>(p.v_star) : lnE;
    const T* text = static_cast<const T*>(p.text);
    const int E = static_cast<int>(d.E);
    const int W = static_cast<int>(d.W);
    const int K = static_cast<int>(d.K);
    const int Rv = static_cast<int>(d.Rv);
    const int Rt = static_cast<int>(d.Rt);
    const float eps = p.ln_eps;

    // V tokens (B, N, E)
    const T* V = static_cast<const T*>(p.visual);
    if (split) {
        T* vtok = buf_at(pl.vtok);
        const dim3 grid(std::max(1u, ceil_div(d.hw, 32)), ceil_div(d.E, 32), static_cast<unsigned>(d.B));
        gather_tokens_kernel<T><<<grid, dim3(32, 8), 0, stream>>>(static_cast<const T*>(p.global_emb),
                                                                  static_cast<const T*>(p.dense), vtok, E,
                                                                  static_cast<int>(d.hw));
        WEAKCLIP_TRY(check_launch("gather_tokens_kernel"));
        V = vtok;
    }
    // V' = LN(Linear(LN(V)))   (B*N, W)
    WEAKCLIP_TRY(launch_layernorm<T>(V, E, lnE, E, w.g[MP0_W], w.g[MP0_B], Rv, E, eps, stream));
    WEAKCLIP_TRY(linear<T>(lnE, Rv, E, w.g[MP1_W], w.g[MP1_B], W, buf.h, stream));
    WEAKCLIP_TRY(launch_layernorm<T>(buf.h, W, vstate, W, w.g[MP2_W], w.g[MP2_B], Rv, W, eps, stream));
    // T' = Linear(LN(T))   (K, W), and the text stack state initialised to T' for every batch element
    WEAKCLIP_TRY(launch_layernorm<T>(text, E, lnE, E, w.g[TP0_W], w.g[TP0_B], K, E, eps, stream));
    WEAKCLIP_TRY(linear<T>(lnE, K, E, w.g[TP1_W], w.g[TP1_B], W, tproj, stream));
    const unsigned blocks = std::min<unsigned>(4096u, ceil_div(d.K * d.W * d.B, 256));
    broadcast_kernel<T><<<blocks, 256, 0, stream>>>(tproj, tstate, d.K * d.W, static_cast<int>(d.B));
    WEAKCLIP_TRY(check_launch("broadcast_kernel"));
    // text -> image stack: queries T' (K per batch), memory V' (N per batch)
    for (int i = 0; i < p.layers; ++i) {
        WEAKCLIP_TRY(run_layer<T>(w.text[i], tstate, vstate, d.K, d.N, d.N, d.Rv, d, eps, buf, stream));
    }
    // T* = T + gamma * Linear(LN(t))   (B*K, E); T is shared by the batch (residual row = m % K)
    WEAKCLIP_TRY(launch_layernorm<T>(tstate, W, buf.h, W, w.g[TO0_W], w.g[TO0_B], Rt, W, eps, stream));
    WEAKCLIP_TRY(linear<T>(buf.h, Rt, W, w.g[TO1_W], w.g[TO1_B], E, tstar, stream, 0, text, K, E, w.g[GAMMA]));
    // image -> text stack, in place on V': queries V' (N per batch), memory T' (K rows shared by the batch)
    for (int i = 0; i < p.layers; ++i) {
        WEAKCLIP_TRY(run_layer<T>(w.visual[i], vstate, tproj, d.N, d.K, 0, d.K, d, eps, buf, stream));
    }
    // V* = V + beta * Linear(LN(v))   (B*N, E)
    WEAKCLIP_TRY(launch_layernorm<T>(vstate, W, buf.h, W, w.g[VO0_W], w.g[VO0_B], Rv, W, eps, stream));
    WEAKCLIP_TRY(linear<T>(buf.h, Rv, W, w.g[VO1_W], w.g[VO1_B], E, vstar, stream, 0, V, 0, E, w.g[BETA]));
    // S = cos(V*[:, 1:], T*)   (B, K, h, w)
    ScoreArgs<T> s{vstar, tstar, static_cast<T*>(p.score), K, E, static_cast<int>(d.hw), 1, d.N * d.E, d.K * d.E};
    return launch_score_map<T>(s, static_cast<int>(d.B), stream);
}

}  // namespace
}  // namespace weakclip

// C API

using namespace weakclip;

extern "C" {

WEAKCLIP_API size_t weakclip_coattn_params_size(void) { return sizeof(WeakclipCoAttnParams); }

WEAKCLIP_API size_t weakclip_coattn_workspace_size(const WeakclipCoAttnParams* p) {
    if (p == nullptr || validate_dims(*p) != WEAKCLIP_STATUS_OK) return 0;
    return make_plan(*p).total;
}

WEAKCLIP_API int32_t weakclip_coattn_num_weights(int32_t layers) { return layers < 0 ? -1 : expanded_count(layers); }

WEAKCLIP_API const char* weakclip_coattn_weight_name(int32_t index, int32_t layers) {
    // Expanded name lists are built once per layer count and never freed (the returned pointers stay valid).
    static std::mutex mu;
    static std::map<int32_t, std::vector<std::string>> cache;
    if (layers < 0 || index < 0 || index >= expanded_count(layers)) return nullptr;
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(layers);
    if (it == cache.end()) {
        std::vector<std::string> names;
        for (int32_t i = 0; i < expanded_count(layers); ++i) {
            int layer = -1;
            const int e = entry_of_expanded(i, layers, &layer);
            std::string n = kEntries[e].name;
            const size_t at = n.find("{i}");
            if (at != std::string::npos) n.replace(at, 3, std::to_string(layer));
            names.push_back(n);
        }
        it = cache.emplace(layers, std::move(names)).first;
    }
    return it->second[static_cast<size_t>(index)].c_str();
}

WEAKCLIP_API int64_t weakclip_coattn_weight_numel(int32_t index, int32_t layers, int32_t embed_dim, int32_t width,
                                                  int32_t mlp_hidden) {
    if (layers < 0) return -1;
    int layer = -1;
    const int e = entry_of_expanded(index, layers, &layer);
    if (e < 0) return -1;
    return shape_numel(kEntries[e].shape, embed_dim, width, mlp_hidden);
}

WEAKCLIP_API int32_t weakclip_coattn_check_layout(void) {
    // Every expanded name must be unique and every shape parseable; every role must resolve.
    for (int L = 0; L <= 4; ++L) {
        const int n = expanded_count(L);
        std::vector<std::string> seen;
        for (int i = 0; i < n; ++i) {
            const char* nm = weakclip_coattn_weight_name(i, L);
            if (nm == nullptr || weakclip_coattn_weight_numel(i, L, 8, 8, 8) <= 0) return 1;
            if (std::find(seen.begin(), seen.end(), std::string(nm)) != seen.end()) return 2;
            seen.emplace_back(nm);
        }
    }
    return all_roles_present() ? 0 : 3;
}

WEAKCLIP_API int32_t weakclip_coattn_forward(const WeakclipCoAttnParams* p, cudaStream_t stream) {
    if (p == nullptr) return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "params is null");
    WEAKCLIP_TRY(validate_dims(*p));
    g_last_error.clear();
    return p->dtype == WEAKCLIP_FP16 ? forward<half>(*p, stream) : forward<float>(*p, stream);
}

WEAKCLIP_API int32_t weakclip_flash_attention(const void* q, const void* k, const void* v, void* o, int32_t batch,
                                              int32_t heads, int32_t nq, int32_t nk, int32_t head_dim, int64_t ldq,
                                              int64_t ldk, int64_t ldv, int64_t ldo, int64_t q_batch_stride,
                                              int64_t k_batch_stride, int64_t v_batch_stride, int64_t o_batch_stride,
                                              float scale, int32_t dtype, cudaStream_t stream) {
    if (q == nullptr || k == nullptr || v == nullptr || o == nullptr) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "flash_attention: null pointer");
    }
    if (batch < 1 || heads < 1 || nq < 1 || nk < 1) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "flash_attention: bad dims B=%d H=%d Nq=%d Nk=%d", batch,
                    heads, nq, nk);
    }
    if (!supported_head_dim(head_dim)) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "flash_attention: head dim %d not in {16, 32, 64, 128}",
                    head_dim);
    }
    const int64_t row = static_cast<int64_t>(heads) * head_dim;
    if (ldq < row || ldk < row || ldv < row || ldo < row) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "flash_attention: row strides must be >= heads*head_dim");
    }
    g_last_error.clear();
    auto run = [&](auto elem) {
        using T = decltype(elem);
        const FlashArgs<T> a{static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
                             static_cast<T*>(o), nq, nk, ldq, ldk, ldv, ldo, q_batch_stride, k_batch_stride,
                             v_batch_stride, o_batch_stride, scale * kLog2e};
        return launch_flash(a, batch, heads, head_dim, stream);
    };
    if (dtype == WEAKCLIP_FP16) return run(half{});
    if (dtype == WEAKCLIP_FP32) return run(0.f);
    return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "flash_attention: dtype %d", dtype);
}

WEAKCLIP_API int32_t weakclip_score_map(const void* v_star, const void* t_star, void* score, int32_t batch,
                                        int32_t num_classes, int32_t embed_dim, int32_t grid_h, int32_t grid_w,
                                        int64_t v_batch_stride, int32_t token_offset, int64_t t_batch_stride,
                                        int32_t dtype, cudaStream_t stream) {
    if (v_star == nullptr || t_star == nullptr || score == nullptr) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "score_map: null pointer");
    }
    if (batch < 1 || batch > 65535 || num_classes < 1 || embed_dim < 1 || grid_h < 1 || grid_w < 1 ||
        token_offset < 0) {
        return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "score_map: bad dims");
    }
    g_last_error.clear();
    auto run = [&](auto elem) {
        using T = decltype(elem);
        const ScoreArgs<T> a{static_cast<const T*>(v_star), static_cast<const T*>(t_star), static_cast<T*>(score),
                             num_classes, embed_dim, grid_h * grid_w, token_offset, v_batch_stride, t_batch_stride};
        return launch_score_map(a, batch, stream);
    };
    if (dtype == WEAKCLIP_FP16) return run(half{});
    if (dtype == WEAKCLIP_FP32) return run(0.f);
    return fail(WEAKCLIP_STATUS_INVALID_ARGUMENT, "score_map: dtype %d", dtype);
}

WEAKCLIP_API const char* weakclip_last_error(void) { return g_last_error.c_str(); }

}  // extern "C"
