/*
 * WeakCLIP co-attention matching on CUDA: C launcher API (libweakclip_coattn.so).  The forward computes
 * weakclip.model.coattention.coattention_reference() at inference (README.md here: "What it computes"):
 * V (B, N, E) with N = 1 + h*w (global token first) and T (K, E) -> score map S (B, K, h, w), optionally V*, T*.
 *
 * Every pointer passed to these functions is a device pointer unless stated otherwise; all tensors are
 * contiguous row-major in the element type chosen by `dtype` (weights included).  All work is enqueued on
 * `stream`; nothing synchronises.  Functions return 0 on success and a non-zero WEAKCLIP_STATUS_* value otherwise;
 * weakclip_last_error() gives a readable message for the calling thread.
 */
#ifndef WEAKCLIP_COATTN_KERNEL_H
#define WEAKCLIP_COATTN_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#if defined(_WIN32)
#define WEAKCLIP_API __declspec(dllexport)
#else
#define WEAKCLIP_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Element type of every tensor argument. Accumulation is always fp32. */
enum WeakclipDtype { WEAKCLIP_FP32 = 0, WEAKCLIP_FP16 = 1 };

enum WeakclipStatus {
    WEAKCLIP_STATUS_OK = 0,
    WEAKCLIP_STATUS_INVALID_ARGUMENT = 1, /* bad dims / null pointer / unsupported head dim */
    WEAKCLIP_STATUS_WORKSPACE_TOO_SMALL = 2,
    WEAKCLIP_STATUS_CUDA_ERROR = 3 /* a kernel launch failed (message names the CUDA error) */
};

/* Version of the params struct below; bump on any layout change (Python checks it). */
#define WEAKCLIP_COATTN_PARAMS_VERSION 1

/*
 * Parameters of the full co-attention forward.  Plain C struct (mirrored by ctypes in engines/cuda_ops.py).
 * The visual input is given either as tokens V = `visual` (B, N, E) or split as `global_emb` g (B, E) plus
 * `dense` F (B, E, h, w) (channel-first, as the encoder emits it); set exactly one of the two forms.
 */
typedef struct WeakclipCoAttnParams {
    int32_t version;     /* = WEAKCLIP_COATTN_PARAMS_VERSION */
    int32_t dtype;       /* WeakclipDtype of all tensors */
    int32_t batch;       /* B */
    int32_t grid_h;      /* h; N = 1 + h*w tokens */
    int32_t grid_w;      /* w */
    int32_t num_classes; /* K */
    int32_t embed_dim;   /* E */
    int32_t width;       /* W (coattn_width) */
    int32_t heads;       /* attention heads; head dim W/heads in {16, 32, 64, 128} */
    int32_t layers;      /* L (coattn_layers), chained decoder layers per stack */
    int32_t mlp_hidden;  /* M = coattn_mlp_ratio * W */
    float ln_eps;        /* LayerNorm epsilon (1e-5) */
    const void* visual;      /* V (B, N, E) tokens, or NULL when g + F are given */
    const void* global_emb;  /* g (B, E), or NULL */
    const void* dense;       /* F (B, E, h, w), or NULL */
    const void* text;        /* T (K, E), shared by the batch */
    /* HOST array of `num_weights` DEVICE pointers, in the order of "packed_weights" in plugin_names.json expanded
     * for `layers` (see weakclip_coattn_weight_name); each tensor contiguous with the shape given there. */
    const void* const* weights;
    int32_t num_weights;
    int32_t reserved0;
    void* score;       /* out: S (B, K, h, w) */
    void* v_star;      /* optional out: V* (B, N, E), or NULL */
    void* t_star;      /* optional out: T* (B, K, E), or NULL */
    void* workspace;   /* device scratch of at least weakclip_coattn_workspace_size(params) bytes */
    size_t workspace_size;
} WeakclipCoAttnParams;

/* sizeof(WeakclipCoAttnParams) as compiled (ctypes mirror check). */
WEAKCLIP_API size_t weakclip_coattn_params_size(void);

/* Bytes of scratch the forward needs for these dims/dtype (pointers in `p` are ignored). 0 on invalid dims. */
WEAKCLIP_API size_t weakclip_coattn_workspace_size(const WeakclipCoAttnParams* p);

/* Number of weight tensors for `layers` decoder layers per stack. */
WEAKCLIP_API int32_t weakclip_coattn_num_weights(int32_t layers);

/* State-dict name of weight `index` (layers expanded), or NULL when out of range. Pointer valid forever. */
WEAKCLIP_API const char* weakclip_coattn_weight_name(int32_t index, int32_t layers);

/* Element count of weight `index` for the given dims, or -1 when out of range. */
WEAKCLIP_API int64_t weakclip_coattn_weight_numel(int32_t index, int32_t layers, int32_t embed_dim, int32_t width,
                                                  int32_t mlp_hidden);

/* 0 when every tensor the launcher needs is found in the generated weight table (self-check). */
WEAKCLIP_API int32_t weakclip_coattn_check_layout(void);

/* Full co-attention forward (see top of file). Asynchronous on `stream`. */
WEAKCLIP_API int32_t weakclip_coattn_forward(const WeakclipCoAttnParams* p, cudaStream_t stream);

/*
 * Fused multi-head attention (flash-style online softmax, no attention matrix in global memory).
 *   q (B, Nq, H, Dh), k and v (B, Nk, H, Dh) -> o (B, Nq, H, Dh); o = softmax(q k^T * scale) v per (b, head).
 * Each token row holds the H heads contiguously (H*Dh elements, element stride 1); ld* is the element distance
 * between consecutive tokens (>= H*Dh) and *_batch_stride between batches (0 broadcasts one k/v to every batch).
 * Dh in {16, 32, 64, 128}.  Nq, Nk >= 1.
 */
WEAKCLIP_API int32_t weakclip_flash_attention(const void* q, const void* k, const void* v, void* o, int32_t batch,
                                              int32_t heads, int32_t nq, int32_t nk, int32_t head_dim, int64_t ldq,
                                              int64_t ldk, int64_t ldv, int64_t ldo, int64_t q_batch_stride,
                                              int64_t k_batch_stride, int64_t v_batch_stride, int64_t o_batch_stride,
                                              float scale, int32_t dtype, cudaStream_t stream);

/*
 * Fused cosine score map: S[b, k, i] = <v_i, t_k> / (max(|v_i|, 1e-12) * max(|t_k|, 1e-12)), written as (B, K, h, w).
 *   v_i = v_star[b*v_batch_stride + (token_offset + i)*E .. +E), i < h*w   (token_offset = 1 skips the global token)
 *   t_k = t_star[b*t_batch_stride + k*E .. +E)                            (t_batch_stride 0: one T* for all b)
 */
WEAKCLIP_API int32_t weakclip_score_map(const void* v_star, const void* t_star, void* score, int32_t batch,
                                        int32_t num_classes, int32_t embed_dim, int32_t grid_h, int32_t grid_w,
                                        int64_t v_batch_stride, int32_t token_offset, int64_t t_batch_stride,
                                        int32_t dtype, cudaStream_t stream);

/* Message of the last failing call on this thread ("" if none). */
WEAKCLIP_API const char* weakclip_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* WEAKCLIP_COATTN_KERNEL_H */
