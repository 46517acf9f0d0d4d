// Flash-style causal GQA attention over packed varlen segments with prefix
// K/V (FlashAttention-2's tiling): the fast path beside the reference kernel
// of attention.h, same segments, same outputs and the same gradient contract
// (out, lse overwritten; dq and each segment's dk/dv accumulated).
//
// The forward and dq kernels take 128 query rows per block (8 warps; 64
// rows and 4 warps with CHUNKFLOW_FLASH_QUERY_WARPS=4) against 64-key tiles,
// the dk/dv kernel 64 keys per block against 64-query tiles; Q K^T, P V and
// the backward's five products run on the tensor cores (mma.sync m16n8k16,
// bf16 inputs through ldmatrix, fp32 accumulation); the online softmax, lse,
// masking and every
// output stay fp32. Inputs are fp32 in global memory and are rounded to bf16
// as tiles are loaded into shared memory, so results differ from the fp32
// reference by bf16 rounding of Q, K, V, dO and the probabilities (the
// tolerances are stated in ops_test). Deterministic, no atomics: the
// backward computes dq in one kernel (a block per query tile) and dk/dv in
// another (a block per key tile and kv head, looping over its query heads).
//
// Supported head dims: flash_attention_supported(); callers fall back to the
// reference kernel otherwise. q, out, dout and every segment's k / v must be
// 16-byte aligned (cudaMalloc and the engine's allocator are).

#ifndef CHUNKFLOW_KERNELS_CUDA_FLASH_ATTENTION_H_
#define CHUNKFLOW_KERNELS_CUDA_FLASH_ATTENTION_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/attention.h"

namespace chunkflow::kernels::cuda {

// head_dim in {16, 32, 64, 128}.
bool flash_attention_supported(int64_t head_dim);

// Errors: INVALID_ARGUMENT (unsupported head_dim, n_heads not a multiple of
// n_kv_heads, a bad segment, CHUNKFLOW_FLASH_QUERY_WARPS other than 4 or 8);
// INTERNAL naming the launch.
absl::Status flash_attention_forward(float* out, float* lse, const float* q,
                                     const AttentionSegment* segs, int64_t n_segs,
                                     int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                     cudaStream_t stream);

// delta: device workspace of rows * n_heads floats (rows: the rows of q),
// overwritten with rowsum(dout * out).
absl::Status flash_attention_backward(float* dq, const AttentionSegment* segs, int64_t n_segs,
                                      const float* dout, const float* q, const float* out,
                                      const float* lse, int64_t n_heads, int64_t n_kv_heads,
                                      int64_t head_dim, float* delta, int64_t rows,
                                      cudaStream_t stream);

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_FLASH_ATTENTION_H_
