// RMSNorm as in HF Qwen2RMSNorm / LlamaRMSNorm, in fp32:
//   out = weight * (x * rsqrt(mean(x^2) + eps))      (no mean subtraction, no bias)
// The forward pass saves rstd = rsqrt(mean(x^2) + eps) per row for backward.
//
// Gradient contract (whole project): every gradient output is ACCUMULATED
// (+=), parameter and activation gradients alike; callers zero the buffers.
// Forward outputs are overwritten (=). Row-major fp32 unless noted.
//
// Usage:
//   rmsnorm_forward(y, rstd, x, w, T, C, 1e-6f);
//   ...
//   rmsnorm_backward(dx, dw, dy, x, w, rstd, T, C);

#ifndef CHUNKFLOW_KERNELS_CPU_RMSNORM_H_
#define CHUNKFLOW_KERNELS_CPU_RMSNORM_H_

#include <cstdint>

namespace chunkflow::kernels::cpu {

// out[t, c] = weight[c] * (inp[t, c] * rstd[t]), rstd[t] = 1 / sqrt(mean_c(inp[t, c]^2) + eps).
// The mean of squares is accumulated in double, then rstd is rounded to fp32.
void rmsnorm_forward(float* out,          // (T, C)
                     float* rstd,         // (T)
                     const float* inp,    // (T, C)
                     const float* weight, // (C)
                     int64_t T, int64_t C, float eps);

// With r = rstd[t], g = dout[t] .* weight:
//   dinp[t, c]  += r * (g[c] - inp[t, c] * r^2 * mean_c(g .* inp[t]))
//   dweight[c]  += sum_t dout[t, c] * inp[t, c] * r
// dweight is reduced per column block (threads own disjoint columns): race-free
// and deterministic.
void rmsnorm_backward(float* dinp,         // (T, C) +=
                      float* dweight,      // (C) +=
                      const float* dout,   // (T, C)
                      const float* inp,    // (T, C)
                      const float* weight, // (C)
                      const float* rstd,   // (T)
                      int64_t T, int64_t C);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_RMSNORM_H_
