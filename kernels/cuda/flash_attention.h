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
// on their way into shared memory, so results differ from the fp32
// reference by bf16 rounding of Q, K, V, dO and the probabilities (the
// tolerances are stated in flash_attention_test). Deterministic, no atomics: the
// backward computes dq in one kernel (a block per query tile) and dk/dv in
// another (a block per key tile and kv head, looping over its query heads;
// when those blocks are too few to fill the GPU, the query heads are split
// over up to n_heads / n_kv_heads blocks whose partial sums a third kernel
// adds in a fixed order). The number of splits depends on the GPU's
// multiprocessor count (CHUNKFLOW_FLASH_DKDV_SPLITS fixes it), and so do
// dk/dv's last bits. Each kernel starts its longest blocks first: the
// last query tiles of a causal segment, the first key tiles.
//
// Staging: the operands a kernel streams tile after tile (K and V in the
// forward and dq kernels, Q and dO in the dk/dv kernel) are first copied
// to bf16 into the caller's workspace, once per call (K / V once per
// segment); the kernels then load those tiles with cp.async into double
// buffers, the next tile while the products of this one run. Rounding is
// the same either way (round to nearest even), so results do not change.
// CHUNKFLOW_FLASH_STAGING=0 keeps fp32 tiles converted by the loading
// threads (no staging workspace), for comparison (attention_bench).
//
// Supported head dims: flash_attention_supported(); callers fall back to the
// reference kernel otherwise. q, out, dout and every segment's k / v must be
// 16-byte aligned (cudaMalloc and the engine's allocator are).

#ifndef CHUNKFLOW_KERNELS_CUDA_FLASH_ATTENTION_H_
#define CHUNKFLOW_KERNELS_CUDA_FLASH_ATTENTION_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/attention.h"

namespace chunkflow::kernels::cuda {

// head_dim in {16, 32, 64, 128}.
bool flash_attention_supported(int64_t head_dim);

// Errors: INVALID_ARGUMENT (unsupported head_dim, n_heads not a multiple of
// n_kv_heads, a bad segment, CHUNKFLOW_FLASH_QUERY_WARPS other than 4 or 8,
// CHUNKFLOW_FLASH_DKDV_SPLITS not a divisor of n_heads / n_kv_heads,
// CHUNKFLOW_FLASH_STAGING other than 0 or 1, a workspace too small);
// INTERNAL naming the launch.
// The floats of device workspace flash_attention_forward needs for these
// segments: the bf16 copies of K and V (see "staging" above; 0 with
// CHUNKFLOW_FLASH_STAGING=0). INVALID_ARGUMENT for the segments, shapes and
// staging value the forward refuses.
absl::StatusOr<int64_t> flash_attention_forward_workspace(const AttentionSegment* segs,
                                                          int64_t n_segs, int64_t n_heads,
                                                          int64_t n_kv_heads, int64_t head_dim);

// workspace: at least flash_attention_forward_workspace() floats of device
// memory, 16-byte aligned (null when that is 0), overwritten
// (INVALID_ARGUMENT if smaller).
absl::Status flash_attention_forward(float* out, float* lse, const float* q,
                                     const AttentionSegment* segs, int64_t n_segs,
                                     int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                     float* workspace, int64_t workspace_floats,
                                     cudaStream_t stream);

// The floats of device workspace flash_attention_backward needs for these
// segments, rows being the rows of q: delta = rowsum(dout * out); with
// staging, Q and dO in bf16 (rows * n_heads * head_dim / 2 floats each) and
// K and V in bf16 for the segment with the most keys; and the dk/dv
// kernel's partial sums where it splits a kv head's query heads over
// several blocks. INVALID_ARGUMENT for the segments, shapes and knobs the
// backward refuses (CHUNKFLOW_FLASH_QUERY_WARPS and alignment are checked
// by the call only).
absl::StatusOr<int64_t> flash_attention_backward_workspace(const AttentionSegment* segs,
                                                           int64_t n_segs, int64_t n_heads,
                                                           int64_t n_kv_heads, int64_t head_dim,
                                                           int64_t rows);

// workspace: at least flash_attention_backward_workspace() floats of device
// memory, 16-byte aligned, overwritten (INVALID_ARGUMENT if smaller). Every
// segment's queries must lie in q's `rows` rows (INVALID_ARGUMENT naming
// them otherwise).
absl::Status flash_attention_backward(float* dq, const AttentionSegment* segs, int64_t n_segs,
                                      const float* dout, const float* q, const float* out,
                                      const float* lse, int64_t n_heads, int64_t n_kv_heads,
                                      int64_t head_dim, int64_t rows, float* workspace,
                                      int64_t workspace_floats, cudaStream_t stream);

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_FLASH_ATTENTION_H_
