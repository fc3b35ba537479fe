// CPU EMULATION of the subset of the CUDA execution model that engines/csrc/coattn_kernel.cu uses.
// TEST HARNESS ONLY (tests/kernel_emu, driven by tests/test_kernel_emulation.py): lets g++ compile the unmodified
// kernel source into a host library so the kernel LOGIC (indexing, masking, online softmax, reductions, barrier
// placement) can be checked on a CPU-only CI. Nothing run through this is a GPU run; no timing, occupancy or
// memory-model result carries over to real hardware.
//
// Model:
//  * Every CUDA thread is a ucontext fiber with its own stack; the blocks of a launch run one after another.
//  * __shared__ becomes a function-local `static`: one copy per kernel instantiation, which is per-block storage
//    because blocks never overlap. (Limitation: it is not re-poisoned between blocks, so a read-before-write of
//    shared memory sees the previous block's data rather than garbage.)
//  * __syncthreads / __syncwarp are real barriers among the fibers; a thread runs until it reaches one (or exits),
//    and every round resumes the runnable fibers in a fresh random order, so a missing barrier lets some threads
//    run ahead and read stale shared memory -> wrong results. A round in which no thread makes progress is a
//    deadlock and fails the launch.
//  * Lanes of a warp are independent threads (like Volta+ independent thread scheduling, and stricter than
//    lock-step): only __syncwarp and the shuffles synchronise them. __shfl_xor_sync and full-mask __syncwarp
//    require all 32 lanes of the warp to be live (as the hardware does: exited lanes in the mask are undefined).
//  * WMMA m16n16k16 (half x half -> float): every lane holds the whole 16x16 tile. load_matrix_sync reads the
//    tile from memory at the moment THAT lane calls it (no implied warp barrier - the conservative reading of
//    the PTX memory model, so missing __syncwarp()s around shared-memory tiles are caught); store_matrix_sync
//    writes only the lane's 1/32 share of the tile (lanes that computed different tiles leave a mixed tile).
//    Pointers must be 256-bit aligned and ldm a multiple of 16 bytes, as the CUDA docs require.
//  * Launch-configuration errors (block > 1024 threads, empty grid, dynamic shared memory) and emulator-detected
//    faults (misaligned WMMA pointer, partial-warp shuffle, deadlock) make the launch fail: cudaGetLastError()
//    returns an error and cudaGetErrorString() describes it (block and thread), so the C launcher reports it
//    through weakclip_last_error() instead of the process aborting. Faulting launches stop at the faulting block.
//  * The thread order is reproducible: std::mt19937 seeded with $WEAKCLIP_EMU_SEED (default 12345) at load.
//
// Included through the shims cuda_runtime.h / cuda_runtime_api.h / cuda_fp16.h / mma.h next to this file;
// tests/kernel_emu/build.py rewrites every `kernel<<<grid, block, smem, stream>>>(args...)` launch into
// `::emu::launch(::emu::LaunchConfig{grid, block, smem, stream}, kernel, args...)`.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <type_traits>
#include <vector>

// The emulator's own loops are excluded from the UB sanitizer the test build enables (they are hot, and the
// sanitizer is there to check the kernel code).
#if defined(__GNUC__)
#define EMU_NOSAN __attribute__((no_sanitize_undefined))
#else
#define EMU_NOSAN
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }

typedef int cudaError_t;
enum { cudaSuccess = 0, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };
typedef struct CUstream_st* cudaStream_t;

typedef _Float16 __half;  // IEEE binary16; conversions round to nearest even like __float2half_rn
typedef __half half;
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return static_cast<__half>(f); }
inline __half __float2half(float f) { return static_cast<__half>(f); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace emu {

struct Fiber {
    ucontext_t ctx;
    bool done;
    dim3 tid;
    int lin;
};

struct Block {
    std::vector<Fiber> f;
    ucontext_t sched;
    int cur = -1, live = 0, n = 0;
    bool aborted = false;
    int bar_count = 0;
    unsigned bar_gen = 0;
    std::vector<int> w_count, w_live, w_size;
    std::vector<unsigned> w_gen;
    std::vector<std::array<std::array<unsigned char, 8>, 32>> slots;  // shuffle exchange, per warp and lane
};

struct LaunchConfig {
    dim3 grid, block;
    size_t smem = 0;
    cudaStream_t stream = nullptr;
};

inline unsigned seed_from_env() {
    const char* s = std::getenv("WEAKCLIP_EMU_SEED");
    return s != nullptr ? static_cast<unsigned>(std::strtoul(s, nullptr, 10)) : 12345u;
}

inline Block* g_blk = nullptr;
inline dim3 g_blockIdx, g_blockDim, g_gridDim;
inline std::function<void()>* g_entry = nullptr;
inline std::mt19937 g_rng(seed_from_env());
inline int g_error = 0;
inline char g_error_msg[512] = "";
inline unsigned long long g_progress = 0;
inline unsigned long long g_launches = 0;
inline unsigned long long g_blocks = 0;
inline std::vector<char> g_stacks;
constexpr size_t kStack = 256 * 1024;

inline void set_error(int code, const char* what) {
    g_error = code;
    std::snprintf(g_error_msg, sizeof(g_error_msg), "[CUDA emulation] %s (block (%u,%u,%u), thread %d)", what,
                  g_blockIdx.x, g_blockIdx.y, g_blockIdx.z, g_blk != nullptr && g_blk->cur >= 0 ? g_blk->cur : -1);
}

inline Fiber& me() { return g_blk->f[g_blk->cur]; }

// A fault inside a thread: record it and abandon the block (the fiber stacks are simply dropped; kernel frames
// hold only trivially destructible data).
[[noreturn]] inline void die(const char* what) {
    set_error(cudaErrorLaunchFailure, what);
    if (g_blk == nullptr || g_blk->cur < 0) {
        std::fprintf(stderr, "%s: outside a kernel thread\n", g_error_msg);
        std::abort();
    }
    g_blk->aborted = true;
    setcontext(&g_blk->sched);
    std::abort();  // unreachable
}

inline void yield() { swapcontext(&me().ctx, &g_blk->sched); }

inline void release_if_complete() {
    Block* b = g_blk;
    if (b->bar_count > 0 && b->bar_count == b->live) {
        b->bar_count = 0;
        b->bar_gen++;
        g_progress++;
    }
    for (size_t w = 0; w < b->w_count.size(); ++w) {
        if (b->w_count[w] > 0 && b->w_count[w] == b->w_live[w]) {
            b->w_count[w] = 0;
            b->w_gen[w]++;
            g_progress++;
        }
    }
}

inline void syncthreads() {
    Block* b = g_blk;
    const unsigned gen = b->bar_gen;
    b->bar_count++;
    g_progress++;
    if (b->bar_count == b->live) {
        b->bar_count = 0;
        b->bar_gen++;
        return;
    }
    while (b->bar_gen == gen) yield();
}

inline void require_full_warp(const char* what) {
    const int w = me().lin / 32;
    if (g_blk->w_size[w] != 32 || g_blk->w_live[w] != 32) die(what);
}

inline void syncwarp() {
    Block* b = g_blk;
    const int w = me().lin / 32;
    const unsigned gen = b->w_gen[w];
    b->w_count[w]++;
    g_progress++;
    if (b->w_count[w] == b->w_live[w]) {
        b->w_count[w] = 0;
        b->w_gen[w]++;
        return;
    }
    while (b->w_gen[w] == gen) yield();
}

template <class T>
T shfl_xor(unsigned mask, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    if (mask != 0xffffffffu) die("__shfl_xor_sync with a partial mask is not emulated");
    require_full_warp("__shfl_xor_sync with exited (or missing) lanes in the warp");
    Block* b = g_blk;
    const int lin = me().lin, w = lin / 32, lane = lin % 32;
    if (lane_mask < 0 || lane_mask > 31) die("__shfl_xor_sync lane mask out of range");
    std::memcpy(b->slots[w][lane].data(), &v, sizeof(T));
    syncwarp();
    T r;
    std::memcpy(&r, b->slots[w][lane ^ lane_mask].data(), sizeof(T));
    syncwarp();
    return r;
}

inline void trampoline() {
    (*g_entry)();
    Block* b = g_blk;
    me().done = true;
    b->live--;
    b->w_live[me().lin / 32]--;
    g_progress++;
    release_if_complete();
}

// Runs one block to completion; false when it faulted or deadlocked (g_error / g_error_msg are set).
inline bool run_block(const dim3& bd) {
    static Block blk;
    Block* b = &blk;
    g_blk = b;
    g_blocks++;
    b->n = static_cast<int>(bd.x * bd.y * bd.z);
    b->f.assign(b->n, Fiber{});
    b->live = b->n;
    b->cur = -1;
    b->aborted = false;
    b->bar_count = 0;
    const int nw = (b->n + 31) / 32;
    b->w_count.assign(nw, 0);
    b->w_gen.assign(nw, 0);
    b->w_live.assign(nw, 0);
    b->w_size.assign(nw, 0);
    b->slots.assign(nw, {});
    if (g_stacks.size() < b->n * kStack) g_stacks.resize(b->n * kStack);
    for (int i = 0; i < b->n; ++i) {
        Fiber& f = b->f[i];
        f.lin = i;
        f.tid = dim3(i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y));
        f.done = false;
        b->w_live[i / 32]++;
        b->w_size[i / 32]++;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = g_stacks.data() + i * kStack;
        f.ctx.uc_stack.ss_size = kStack;
        f.ctx.uc_link = &b->sched;
        makecontext(&f.ctx, trampoline, 0);
    }
    std::vector<int> order(b->n);
    for (int i = 0; i < b->n; ++i) order[i] = i;
    int stuck = 0;
    while (b->live > 0) {
        std::shuffle(order.begin(), order.end(), g_rng);
        const unsigned long long before = g_progress;
        for (int i : order) {
            if (b->f[i].done) continue;
            b->cur = i;
            swapcontext(&b->sched, &b->f[i].ctx);  // returns when fiber i waits, exits, or faults (die)
            if (b->aborted) {
                b->cur = -1;
                return false;
            }
        }
        b->cur = -1;
        if (g_progress == before) {
            if (++stuck > 2) {
                set_error(cudaErrorLaunchFailure, "deadlock: threads wait on a barrier that never completes");
                return false;
            }
        } else {
            stuck = 0;
        }
    }
    return true;
}

template <class K, class... Args>
void launch(const LaunchConfig& cfg, K kernel, Args... args) {
    if (g_error != 0) return;  // an earlier failure not yet collected by cudaGetLastError(): do nothing
    g_launches++;
    const dim3 grid = cfg.grid, block = cfg.block;
    const unsigned long long nt = 1ull * block.x * block.y * block.z;
    if (nt == 0 || nt > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535) {
        g_blockIdx = dim3(0, 0, 0);
        set_error(cudaErrorInvalidConfiguration, "invalid launch configuration");
        return;
    }
    if (cfg.smem != 0) {
        set_error(cudaErrorInvalidConfiguration, "dynamic shared memory is not emulated");
        return;
    }
    std::function<void()> fn = [&]() { kernel(args...); };
    g_entry = &fn;
    g_gridDim = grid;
    g_blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
            for (unsigned x = 0; x < grid.x; ++x) {
                g_blockIdx = dim3(x, y, z);
                if (!run_block(block)) {
                    g_blk = nullptr;
                    return;
                }
            }
        }
    }
    g_blk = nullptr;
}

}  // namespace emu

inline cudaError_t cudaGetLastError() {
    const int e = emu::g_error;
    emu::g_error = 0;
    return e;
}
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : emu::g_error_msg; }

// Introspection for the tests (the library is compiled without -fvisibility=hidden, so these are exported).
extern "C" unsigned long long weakclip_emu_launches(void) { return emu::g_launches; }
extern "C" unsigned long long weakclip_emu_blocks(void) { return emu::g_blocks; }

#define threadIdx (::emu::me().tid)
#define blockIdx (::emu::g_blockIdx)
#define blockDim (::emu::g_blockDim)
#define gridDim (::emu::g_gridDim)
inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu::die("__syncwarp with a partial mask is not emulated");
    emu::require_full_warp("__syncwarp with exited (or missing) lanes in the warp");
    emu::syncwarp();
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    return emu::shfl_xor(mask, v, lane_mask);
}

namespace nvcuda {
namespace wmma {
struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "only m16n16k16 is emulated");
    float v[16][16];  // the whole tile, in every lane
};

template <class T>
EMU_NOSAN inline void check_ptr(const T* p, unsigned ldm, const char* what) {
    emu::require_full_warp(what);
    if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::die("wmma pointer not 256-bit aligned");
    if ((ldm * sizeof(T)) % 16 != 0) emu::die("wmma ldm not a multiple of 16 bytes");
}

template <class T, class L>
EMU_NOSAN inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
    check_ptr(p, ldm, "wmma::load_matrix_sync with exited lanes");
    for (int i = 0; i < 16; ++i)
        for (int k = 0; k < 16; ++k)
            f.v[i][k] = static_cast<float>(std::is_same<L, row_major>::value ? p[i * ldm + k] : p[k * ldm + i]);
}
template <class T, class L>
EMU_NOSAN inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, L>& f, const T* p, unsigned ldm) {
    check_ptr(p, ldm, "wmma::load_matrix_sync with exited lanes");
    for (int k = 0; k < 16; ++k)
        for (int j = 0; j < 16; ++j)
            f.v[k][j] = static_cast<float>(std::is_same<L, row_major>::value ? p[k * ldm + j] : p[j * ldm + k]);
}
EMU_NOSAN inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                                       layout_t l) {
    check_ptr(p, ldm, "wmma::load_matrix_sync with exited lanes");
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) f.v[i][j] = l == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
}
EMU_NOSAN inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                                        layout_t l) {
    check_ptr(p, ldm, "wmma::store_matrix_sync with exited lanes");
    const int lane = emu::me().lin % 32;  // each lane stores its share only (the hardware distributes the tile)
    for (int e = lane; e < 256; e += 32) {
        const int i = e / 16, j = e % 16;
        (l == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.v[i][j];
    }
}
EMU_NOSAN inline void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, float x) {
    for (auto& r : f.v)
        for (auto& e : r) e = x;
}
// d = a b + c with fp32 accumulation in k order (products of fp16 values are exact in fp32).
template <class LA, class LB>
EMU_NOSAN inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                               const fragment<matrix_a, 16, 16, 16, half, LA>& a,
                               const fragment<matrix_b, 16, 16, 16, half, LB>& b,
                               const fragment<accumulator, 16, 16, 16, float>& c) {
    emu::require_full_warp("wmma::mma_sync with exited lanes");
    float t[16][16];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float s = c.v[i][j];
            for (int k = 0; k < 16; ++k) s += a.v[i][k] * b.v[k][j];
            t[i][j] = s;
        }
    std::memcpy(d.v, t, sizeof(t));
}
}  // namespace wmma
}  // namespace nvcuda
