// The ops of ops.h, attention.h and flash_attention.h as their CPU twins
// from kernels/cpu, over the runtime emulation (host_emulation.cc): what the
// CUDA engine's emulated tests run, to check the engine's HOST logic
// (buffer lifetimes, zeroing, state-store offsets, pointer mapping, op
// order, tied-gradient sums, optimizer spans) fast. The kernels themselves
// are checked against the same twins by the SIMT emulation's tests
// (kernels/cuda:ops_simt_test, flash_attention_simt_test) and on a GPU by
// ops_test and flash_attention_test.

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/optimizer.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/ops.h"

namespace chunkflow::kernels::cuda {
// ---------------------------------------------------------------------------
// ops.h
// ---------------------------------------------------------------------------

cudaError_t embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t T,
                              int64_t C, cudaStream_t) {
  cpu::embedding_forward(out, tokens, wte, T, C);
  return cudaSuccess;
}
cudaError_t embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t T,
                               int64_t C, cudaStream_t) {
  cpu::embedding_backward(dwte, dout, tokens, T, C);
  return cudaSuccess;
}
cudaError_t embedding_backward_grouped(float* dwte, const float* dout, const int32_t* rows,
                                       const int32_t* begin, const int32_t* token,
                                       int64_t n_groups, int64_t C, cudaStream_t) {
  for (int64_t g = 0; g < n_groups; ++g) {
    float* dst = dwte + static_cast<int64_t>(token[g]) * C;
    for (int32_t i = begin[g]; i < begin[g + 1]; ++i) {
      const float* src = dout + static_cast<int64_t>(rows[i]) * C;
      for (int64_t c = 0; c < C; ++c) dst[c] += src[c];
    }
  }
  return cudaSuccess;
}
cudaError_t rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight,
                            int64_t T, int64_t C, float eps, cudaStream_t) {
  cpu::rmsnorm_forward(out, rstd, inp, weight, T, C, eps);
  return cudaSuccess;
}
cudaError_t rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                             const float* weight, const float* rstd, int64_t T, int64_t C,
                             cudaStream_t) {
  cpu::rmsnorm_backward(dinp, dweight, dout, inp, weight, rstd, T, C);
  return cudaSuccess;
}
cudaError_t rope_forward(float* out, const float* inp, const int64_t* positions, int64_t T,
                         int64_t n_heads, int64_t head_dim, float theta, cudaStream_t) {
  cpu::rope_forward(out, inp, positions, T, n_heads, head_dim, theta);
  return cudaSuccess;
}
cudaError_t rope_backward(float* dinp, const float* dout, const int64_t* positions, int64_t T,
                          int64_t n_heads, int64_t head_dim, float theta, cudaStream_t) {
  cpu::rope_backward(dinp, dout, positions, T, n_heads, head_dim, theta);
  return cudaSuccess;
}
cudaError_t cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                                  int64_t T, int64_t V, cudaStream_t) {
  cpu::cross_entropy_forward(losses, logits, targets, T, V);
  return cudaSuccess;
}
cudaError_t cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                   const float* dlosses, int64_t T, int64_t V, cudaStream_t) {
  cpu::cross_entropy_backward(dlogits, logits, targets, dlosses, T, V);
  return cudaSuccess;
}
cudaError_t cross_entropy_fused(float* losses, float* logits, const int32_t* targets, float dloss,
                                int64_t T, int64_t V, cudaStream_t) {
  std::vector<float> row_losses(static_cast<size_t>(T));
  std::vector<float> grad(static_cast<size_t>(T * V), 0.0f);
  const std::vector<float> dlosses(static_cast<size_t>(T), dloss);
  cpu::cross_entropy_forward(row_losses.data(), logits, targets, T, V);
  cpu::cross_entropy_backward(grad.data(), logits, targets, dlosses.data(), T, V);
  std::memcpy(logits, grad.data(), grad.size() * sizeof(float));
  if (losses != nullptr) std::memcpy(losses, row_losses.data(), row_losses.size() * sizeof(float));
  return cudaSuccess;
}
cudaError_t add_to(float* dst, const float* src, int64_t n, cudaStream_t) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
  return cudaSuccess;
}
cudaError_t swiglu_forward(float* out, const float* gate, const float* up, int64_t N,
                           cudaStream_t) {
  cpu::swiglu_forward(out, gate, up, N);
  return cudaSuccess;
}
cudaError_t swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                            const float* up, int64_t N, cudaStream_t) {
  cpu::swiglu_backward(dgate, dup, dout, gate, up, N);
  return cudaSuccess;
}
namespace {
void RoundToBf16(__nv_bfloat16* out, const float* in, int64_t n) {
  if (out == nullptr) return;
  for (int64_t i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(in[i]);
}
std::vector<float> Widened(const __nv_bfloat16* in, int64_t n) {
  std::vector<float> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) w[i] = __bfloat162float(in[i]);
  return w;
}
}  // namespace
cudaError_t rmsnorm_forward_bf16(__nv_bfloat16* out, float* rstd, const float* inp,
                                 const float* weight, int64_t T, int64_t C, float eps,
                                 cudaStream_t) {
  std::vector<float> y(static_cast<size_t>(T * C));
  cpu::rmsnorm_forward(y.data(), rstd, inp, weight, T, C, eps);
  RoundToBf16(out, y.data(), T * C);
  return cudaSuccess;
}
cudaError_t swiglu_forward_bf16(__nv_bfloat16* out, __nv_bfloat16* gate16, __nv_bfloat16* up16,
                                const float* gate, const float* up, int64_t N, cudaStream_t) {
  std::vector<float> y(static_cast<size_t>(N));
  cpu::swiglu_forward(y.data(), gate, up, N);
  RoundToBf16(out, y.data(), N);
  RoundToBf16(gate16, gate, N);
  RoundToBf16(up16, up, N);
  return cudaSuccess;
}
cudaError_t swiglu_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* gate,
                                const __nv_bfloat16* up, int64_t N, cudaStream_t stream) {
  return swiglu_forward_bf16(out, nullptr, nullptr, Widened(gate, N).data(), Widened(up, N).data(),
                             N, stream);
}
cudaError_t swiglu_backward_bf16(__nv_bfloat16* dgate, __nv_bfloat16* dup, const float* dout,
                                 const float* gate, const float* up, int64_t N, cudaStream_t) {
  std::vector<float> dg(static_cast<size_t>(N), 0.0f), du(static_cast<size_t>(N), 0.0f);
  cpu::swiglu_backward(dg.data(), du.data(), dout, gate, up, N);
  RoundToBf16(dgate, dg.data(), N);
  RoundToBf16(dup, du.data(), N);
  return cudaSuccess;
}
cudaError_t swiglu_backward_bf16(__nv_bfloat16* dgate, __nv_bfloat16* dup, const float* dout,
                                 const __nv_bfloat16* gate, const __nv_bfloat16* up, int64_t N,
                                 cudaStream_t stream) {
  return swiglu_backward_bf16(dgate, dup, dout, Widened(gate, N).data(), Widened(up, N).data(), N,
                              stream);
}
cudaError_t cross_entropy_fused_bf16(float* losses, __nv_bfloat16* dlogits, const float* logits,
                                     const int32_t* targets, float dloss, int64_t T, int64_t V,
                                     cudaStream_t stream) {
  std::vector<float> d(logits, logits + T * V);
  if (cudaError_t e = cross_entropy_fused(losses, d.data(), targets, dloss, T, V, stream);
      e != cudaSuccess) {
    return e;
  }
  RoundToBf16(dlogits, d.data(), T * V);
  return cudaSuccess;
}
cudaError_t adamw_update_multi(float* params, const float* grads, float* m, float* v,
                               const TensorSpan* spans, int64_t n_spans, int64_t step,
                               const AdamWConfig& cfg, cudaStream_t) {
  for (int64_t s = 0; s < n_spans; ++s) {
    cpu::AdamWConfig c;
    c.lr = cfg.lr;
    c.beta1 = cfg.beta1;
    c.beta2 = cfg.beta2;
    c.eps = cfg.eps;
    c.weight_decay = spans[s].decay ? cfg.weight_decay : 0.0f;
    const int64_t o = spans[s].offset;
    cpu::adamw_update(params + o, grads + o, m + o, v + o, spans[s].numel, step, c);
  }
  return cudaSuccess;
}
cudaError_t sgd_update(float* params, const float* grads, int64_t n, float lr, cudaStream_t) {
  cpu::sgd_update(params, grads, n, lr);
  return cudaSuccess;
}
cudaError_t sum_of_squares(double* out, const float* x, int64_t n, double*, cudaStream_t) {
  *out = cpu::sum_of_squares(x, n);
  return cudaSuccess;
}
cudaError_t scale(float* x, int64_t n, float factor, cudaStream_t) {
  cpu::scale(x, n, factor);
  return cudaSuccess;
}
cudaError_t float_to_bf16(__nv_bfloat16* out, const float* in, int64_t n, cudaStream_t) {
  for (int64_t i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(in[i]);
  return cudaSuccess;
}
cudaError_t bf16_to_float(float* out, const __nv_bfloat16* in, int64_t n, cudaStream_t) {
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat162float(in[i]);
  return cudaSuccess;
}
cudaError_t broadcast_rows(float* out, const float* row, int64_t T, int64_t C, cudaStream_t) {
  for (int64_t t = 0; t < T; ++t) std::memcpy(out + t * C, row, sizeof(float) * C);
  return cudaSuccess;
}
cudaError_t column_sums(float* sums, const float* x, int64_t T, int64_t C, cudaStream_t) {
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t t = 0; t < T; ++t) s += x[t * C + c];
    sums[c] += static_cast<float>(s);
  }
  return cudaSuccess;
}
cudaError_t column_sums(float* sums, const __nv_bfloat16* x, int64_t T, int64_t C, cudaStream_t) {
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t t = 0; t < T; ++t) s += __bfloat162float(x[t * C + c]);
    sums[c] += static_cast<float>(s);
  }
  return cudaSuccess;
}

// ---------------------------------------------------------------------------
// attention.h
// ---------------------------------------------------------------------------

namespace {

std::vector<cpu::AttentionSegment> CpuSegments(const AttentionSegment* segs, int64_t n) {
  std::vector<cpu::AttentionSegment> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    out[i].q_begin = segs[i].q_begin;
    out[i].length = segs[i].length;
    out[i].offset = segs[i].offset;
    out[i].k = segs[i].k;
    out[i].v = segs[i].v;
    out[i].dk = segs[i].dk;
    out[i].dv = segs[i].dv;
  }
  return out;
}

}  // namespace

absl::Status attention_forward(float* out, float* lse, const float* q,
                               const AttentionSegment* segs, int64_t n_segs, int64_t n_heads,
                               int64_t n_kv_heads, int64_t head_dim, cudaStream_t) {
  const std::vector<cpu::AttentionSegment> s = CpuSegments(segs, n_segs);
  cpu::attention_forward(out, lse, q, s.data(), n_segs, n_heads, n_kv_heads, head_dim);
  return absl::OkStatus();
}
absl::Status attention_backward(float* dq, const AttentionSegment* segs, int64_t n_segs,
                                const float* dout, const float* q, const float* out,
                                const float* lse, int64_t n_heads, int64_t n_kv_heads,
                                int64_t head_dim, cudaStream_t) {
  const std::vector<cpu::AttentionSegment> s = CpuSegments(segs, n_segs);
  cpu::attention_backward(dq, s.data(), n_segs, dout, q, out, lse, n_heads, n_kv_heads, head_dim);
  return absl::OkStatus();
}

bool flash_attention_supported(int64_t head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}
absl::StatusOr<int64_t> flash_attention_forward_workspace(const AttentionSegment*, int64_t,
                                                          int64_t, int64_t, int64_t) {
  return 0;  // this twin stages nothing
}
absl::Status flash_attention_forward(float* out, float* lse, const float* q,
                                     const AttentionSegment* segs, int64_t n_segs,
                                     int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                     float*, int64_t, cudaStream_t stream) {
  return attention_forward(out, lse, q, segs, n_segs, n_heads, n_kv_heads, head_dim, stream);
}
absl::StatusOr<int64_t> flash_attention_backward_workspace(const AttentionSegment*, int64_t,
                                                           int64_t n_heads, int64_t, int64_t,
                                                           int64_t rows) {
  return rows * n_heads;  // delta's; this twin never splits dk / dv
}
absl::Status flash_attention_backward(float* dq, const AttentionSegment* segs, int64_t n_segs,
                                      const float* dout, const float* q, const float* out,
                                      const float* lse, int64_t n_heads, int64_t n_kv_heads,
                                      int64_t head_dim, int64_t rows, float* workspace,
                                      int64_t workspace_floats, cudaStream_t stream) {
  if (workspace_floats < rows * n_heads) {
    return absl::InvalidArgumentError("flash attention: the backward's workspace is too small");
  }
  // Written, as on the device.
  for (int64_t i = 0; i < workspace_floats; ++i) workspace[i] = 0.0f;
  return attention_backward(dq, segs, n_segs, dout, q, out, lse, n_heads, n_kv_heads, head_dim,
                            stream);
}

}  // namespace chunkflow::kernels::cuda
