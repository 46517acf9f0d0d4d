// Causal GQA attention over packed varlen segments with prefix K/V: the CUDA
// twin of kernels/cpu/attention.h (same segments, same lse, same gradient
// contract: dq, dk, dv accumulated; out, lse overwritten). Pointers inside
// the segments are device memory; the segment array itself is host memory.
//
// This is the reference-quality version: exact fp32 softmax with its lse, one
// block per (query, head) in the forward and dq pass, one block per (key, kv
// head) for dk/dv (so every output element has one writer: deterministic, no
// atomics), probabilities recomputed from lse as in the CPU twin. It is the
// GPU oracle the flash-style tiled kernel will be held to; it is not fast.
//
// Preconditions: head_dim <= kMaxAttentionHeadDim; n_heads a multiple of
// n_kv_heads; segments do not share dk/dv rows.

#ifndef CHUNKFLOW_KERNELS_CUDA_ATTENTION_H_
#define CHUNKFLOW_KERNELS_CUDA_ATTENTION_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace chunkflow::kernels::cuda {

inline constexpr int64_t kMaxAttentionHeadDim = 256;

struct AttentionSegment {
  int64_t q_begin = 0;
  int64_t length = 0;
  int64_t offset = 0;
  const float* k = nullptr;  // (offset + length, n_kv_heads, head_dim)
  const float* v = nullptr;
  float* dk = nullptr;  // +=, backward only
  float* dv = nullptr;
};

// Errors: INVALID_ARGUMENT naming the bad shape; the launch's CUDA error.
absl::Status attention_forward(float* out, float* lse, const float* q,
                               const AttentionSegment* segs, int64_t n_segs, int64_t n_heads,
                               int64_t n_kv_heads, int64_t head_dim, cudaStream_t stream);
absl::Status attention_backward(float* dq, const AttentionSegment* segs, int64_t n_segs,
                                const float* dout, const float* q, const float* out,
                                const float* lse, int64_t n_heads, int64_t n_kv_heads,
                                int64_t head_dim, cudaStream_t stream);

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_ATTENTION_H_
