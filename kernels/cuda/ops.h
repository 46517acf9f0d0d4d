// CUDA twins of the CPU reference ops (kernels/cpu/): same names, same
// argument order, same gradient contract, plus a trailing cudaStream_t.
// Every pointer is device memory unless noted.
//
// Gradient contract (whole project): every gradient output is ACCUMULATED
// (+=); forward outputs are overwritten (=). Row-major fp32 (the bf16 paths
// come with the GEMMs and attention).
//
// Each function enqueues its kernel(s) on `stream` and returns the launch
// status (cudaGetLastError right after the launch): a bad launch
// configuration is reported here, a fault inside the kernel by the next
// synchronising call. status.h turns both into absl::Status naming the op.
//
// Determinism: the reductions (embedding_backward, rmsnorm's dweight,
// column_sums, sum_of_squares) sum in a fixed order on every run - no
// atomics. The embedding backward follows the CPU twin's order exactly; the
// column reductions sum 32 row lanes in double, then the lanes in order.
//
//   cuda::rmsnorm_forward(y, rstd, x, w, T, C, 1e-6f, stream);

#ifndef CHUNKFLOW_KERNELS_CUDA_OPS_H_
#define CHUNKFLOW_KERNELS_CUDA_OPS_H_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace chunkflow::kernels::cuda {

// out[t, :] = wte[tokens[t], :].   Preconditions: tokens in [0, V).
cudaError_t embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t T,
                              int64_t C, cudaStream_t stream);
// dwte[tokens[t], :] += dout[t, :]; one thread per column walks t in order
// (the CPU twin's order, so the sums are bit-identical to it).
cudaError_t embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t T,
                               int64_t C, cudaStream_t stream);

// The same sums, parallel over tokens and columns: the rows of a chunk
// grouped by token on the host (GroupRowsByToken), then one thread per
// (token, column) adds its rows in order - still the CPU twin's exact
// sequence of additions, so bit-identical to it. What the engine uses.
struct TokenGroups {
  std::vector<int32_t> rows;   // row indices, grouped by token, increasing within a group
  std::vector<int32_t> begin;  // group g is rows[begin[g], begin[g + 1]); size groups + 1
  std::vector<int32_t> token;  // group g's token id
};
inline TokenGroups GroupRowsByToken(const int32_t* tokens, int64_t T) {
  TokenGroups g;
  g.rows.resize(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) g.rows[t] = static_cast<int32_t>(t);
  std::stable_sort(g.rows.begin(), g.rows.end(),
                   [&](int32_t a, int32_t b) { return tokens[a] < tokens[b]; });
  for (int64_t i = 0; i < T; ++i) {
    if (i == 0 || tokens[g.rows[i]] != tokens[g.rows[i - 1]]) {
      g.begin.push_back(static_cast<int32_t>(i));
      g.token.push_back(tokens[g.rows[i]]);
    }
  }
  g.begin.push_back(static_cast<int32_t>(T));
  return g;
}
// rows, begin, token: device copies of a TokenGroups (n_groups = token.size()).
cudaError_t embedding_backward_grouped(float* dwte, const float* dout, const int32_t* rows,
                                       const int32_t* begin, const int32_t* token,
                                       int64_t n_groups, int64_t C, cudaStream_t stream);

// As kernels/cpu/rmsnorm.h (mean of squares in double, rstd rounded to fp32).
cudaError_t rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight,
                            int64_t T, int64_t C, float eps, cudaStream_t stream);
cudaError_t rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                             const float* weight, const float* rstd, int64_t T, int64_t C,
                             cudaStream_t stream);

// RoPE, HF rotate_half layout, as kernels/cpu/rope.h: inv_freq is computed
// on the host with the CPU twin's fp32 powf and passed by value (a device
// powf differs by an ulp, which at position 16K moves the angle by ~1e-3);
// cos/sin of (float)position * inv_freq[i] on the device (IEEE sinf/cosf, no
// fast math). out may alias inp; dinp must not alias dout.
// Preconditions: head_dim even and at most kMaxRopeHeadDim.
inline constexpr int64_t kMaxRopeHeadDim = 512;
cudaError_t rope_forward(float* out, const float* inp, const int64_t* positions, int64_t T,
                         int64_t n_heads, int64_t head_dim, float theta, cudaStream_t stream);
cudaError_t rope_backward(float* dinp, const float* dout, const int64_t* positions, int64_t T,
                          int64_t n_heads, int64_t head_dim, float theta, cudaStream_t stream);

// Softmax cross-entropy per token with the ignore index -100, as
// kernels/cpu/cross_entropy.h: one block per row, the row max exact, the
// exp-sum of fp32 expf in double (a block-tree order, not the CPU's).
inline constexpr int32_t kIgnoreIndex = -100;
cudaError_t cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                                  int64_t T, int64_t V, cudaStream_t stream);
cudaError_t cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                   const float* dlosses, int64_t T, int64_t V,
                                   cudaStream_t stream);

// The LM head's loss and softmax gradient fused, in place: for every row,
// losses[t] = the row's cross-entropy (0 where ignored; skipped when losses is
// null) and logits[t, :] is OVERWRITTEN with dloss * (softmax - onehot) (0
// where ignored) - what cross_entropy_forward and cross_entropy_backward with
// dlosses = dloss into zeros give, without a second (T, V) buffer or a
// second pass over the logits. The head's backward GEMMs read the result.
cudaError_t cross_entropy_fused(float* losses, float* logits, const int32_t* targets, float dloss,
                                int64_t T, int64_t V, cudaStream_t stream);

// dst[i] += src[i] (residual adds, gradient sums).
cudaError_t add_to(float* dst, const float* src, int64_t n, cudaStream_t stream);

// out = silu(gate) * up; the backward as kernels/cpu/swiglu.h.
cudaError_t swiglu_forward(float* out, const float* gate, const float* up, int64_t N,
                           cudaStream_t stream);
cudaError_t swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                            const float* up, int64_t N, cudaStream_t stream);

// The mixed-precision engine's fusions: an fp32 op and the float_to_bf16 of
// its outputs in one pass, equal to the two bit for bit (the same element
// arithmetic, then round to nearest even) with the fp32 intermediate never
// written. Each bf16 array here is what the next GEMM reads or what the
// backward keeps.
//  - rmsnorm_forward_bf16: rmsnorm_forward, out rounded (rstd fp32).
//  - swiglu_forward_bf16 (fp32 gate / up): swiglu_forward, out rounded; and,
//    where gate16 / up16 are not null, gate and up rounded into them (the
//    bf16 activation storage) in the same pass.
//  - swiglu_forward_bf16 (bf16 gate / up): the same on the widened inputs.
//  - swiglu_backward_bf16: swiglu_backward into ZEROED fp32 gradients,
//    rounded. The bf16 gradients are OVERWRITTEN, not accumulated (an
//    exception to the contract above: a bf16 sum would round at every add).
//  - cross_entropy_fused_bf16: cross_entropy_fused, its gradient rounded
//    into the separate bf16 tile `dlogits` (logits are left as they are).
cudaError_t rmsnorm_forward_bf16(__nv_bfloat16* out, float* rstd, const float* inp,
                                 const float* weight, int64_t T, int64_t C, float eps,
                                 cudaStream_t stream);
cudaError_t swiglu_forward_bf16(__nv_bfloat16* out, __nv_bfloat16* gate16, __nv_bfloat16* up16,
                                const float* gate, const float* up, int64_t N,
                                cudaStream_t stream);
cudaError_t swiglu_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* gate,
                                const __nv_bfloat16* up, int64_t N, cudaStream_t stream);
cudaError_t swiglu_backward_bf16(__nv_bfloat16* dgate, __nv_bfloat16* dup, const float* dout,
                                 const float* gate, const float* up, int64_t N,
                                 cudaStream_t stream);
cudaError_t swiglu_backward_bf16(__nv_bfloat16* dgate, __nv_bfloat16* dup, const float* dout,
                                 const __nv_bfloat16* gate, const __nv_bfloat16* up, int64_t N,
                                 cudaStream_t stream);
cudaError_t cross_entropy_fused_bf16(float* losses, __nv_bfloat16* dlogits, const float* logits,
                                     const int32_t* targets, float dloss, int64_t T, int64_t V,
                                     cudaStream_t stream);

// torch.optim.AdamW's single-tensor op order, as kernels/cpu/optimizer.h;
// the scalars are formed on the host in double, as the CPU twin does.
struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
};
cudaError_t adamw_update(float* params, const float* grads, float* m, float* v, int64_t n,
                         int64_t step, const AdamWConfig& cfg, cudaStream_t stream);
cudaError_t sgd_update(float* params, const float* grads, int64_t n, float lr,
                       cudaStream_t stream);

// Multi-tensor AdamW: one launch for every tensor of a stage's flat buffers
// (params, grads, m, v share the layout of engine::StageParams), each tensor
// with its own weight decay on or off - what engine::ApplyUpdate does tensor
// by tensor. `spans` is device memory (n_spans entries); `cfg.weight_decay`
// applies to spans with decay set.
struct TensorSpan {
  int64_t offset = 0;
  int64_t numel = 0;
  int32_t decay = 0;  // 1: decoupled weight decay applies (matrices)
};
cudaError_t adamw_update_multi(float* params, const float* grads, float* m, float* v,
                               const TensorSpan* spans, int64_t n_spans, int64_t step,
                               const AdamWConfig& cfg, cudaStream_t stream);

// *out (device, one double) = sum_i x[i]^2 in double: fixed blocks of
// partial sums in `scratch` (device, kSumOfSquaresBlocks doubles), then one
// block adds them in order.
inline constexpr int kSumOfSquaresBlocks = 256;
cudaError_t sum_of_squares(double* out, const float* x, int64_t n, double* scratch,
                           cudaStream_t stream);
// x[i] *= factor.
cudaError_t scale(float* x, int64_t n, float factor, cudaStream_t stream);

// Precision conversions of the mixed-precision path: fp32 -> bf16 rounds to
// nearest even (__float2bfloat16_rn), bf16 -> fp32 is exact.
cudaError_t float_to_bf16(__nv_bfloat16* out, const float* in, int64_t n, cudaStream_t stream);
cudaError_t bf16_to_float(float* out, const __nv_bfloat16* in, int64_t n, cudaStream_t stream);

// Helpers of the linear layer (linear.h). out[t, :] = row[:] for every t.
cudaError_t broadcast_rows(float* out, const float* row, int64_t T, int64_t C,
                           cudaStream_t stream);
// sums[c] += sum_t x[t, c] in double (32 row lanes, then the lanes in order).
cudaError_t column_sums(float* sums, const float* x, int64_t T, int64_t C, cudaStream_t stream);
// The same over bf16 x (each element widened exactly, then summed as above:
// equal to bf16_to_float followed by the fp32 overload, without the copy).
cudaError_t column_sums(float* sums, const __nv_bfloat16* x, int64_t T, int64_t C,
                        cudaStream_t stream);

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_OPS_H_
