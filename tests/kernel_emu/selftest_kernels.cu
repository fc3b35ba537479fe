// Self-check of the CUDA emulator (tests/test_kernel_emulation.py::test_emulator_self_check), built through the
// same launch rewrite + shims as the real kernels: a kernel whose result depends on a __syncthreads() (run with
// and without it), a misaligned WMMA load, a misaligned float4 load, and an invalid launch configuration.
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdio>

__global__ void reverse_kernel(const float* in, float* out, int sync) {
    __shared__ float s[256];
    const int t = threadIdx.x;
    s[t] = in[blockIdx.x * 256 + t];
    if (sync) __syncthreads();  // block-uniform
    out[blockIdx.x * 256 + t] = s[255 - t];
}

__global__ void wmma_misaligned_kernel(float* out) {
    using namespace nvcuda;
    __shared__ __align__(32) half tile[16 * 16 + 16];
    for (int i = threadIdx.x; i < 16 * 16 + 16; i += 32) tile[i] = __float2half_rn(1.f);
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> a;
    wmma::load_matrix_sync(a, &tile[1], 16);  // 2-byte offset: not 256-bit aligned
    out[threadIdx.x] = 1.f;
}

__global__ void float4_misaligned_kernel(const float* in, float* out) {
    const float4 v = *reinterpret_cast<const float4*>(in + 1 + 4 * threadIdx.x);  // 4-byte offset
    out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

__global__ void noop_kernel() {}

static int status(char* msg, int n) {
    const cudaError_t e = cudaGetLastError();
    std::snprintf(msg, static_cast<size_t>(n), "%s", cudaGetErrorString(e));
    return e;
}

extern "C" int selftest_reverse(const float* in, float* out, int blocks, int sync, char* msg, int n) {
    reverse_kernel<<<blocks, 256, 0, nullptr>>>(in, out, sync);
    return status(msg, n);
}

extern "C" int selftest_wmma_misaligned(float* out, char* msg, int n) {
    wmma_misaligned_kernel<<<1, 32, 0, nullptr>>>(out);
    return status(msg, n);
}

extern "C" int selftest_float4_misaligned(const float* in, float* out, char* msg, int n) {
    float4_misaligned_kernel<<<1, 32, 0, nullptr>>>(in, out);
    return status(msg, n);
}

extern "C" int selftest_bad_config(char* msg, int n) {
    noop_kernel<<<1, 2048, 0, nullptr>>>();
    return status(msg, n);
}
