// Parameter updates and the gradient-norm helpers for clipping, over flat fp32
// buffers (a whole parameter group at once, or one shard of it).
//
// Gradient contract (whole project): every gradient output is ACCUMULATED
// (+=), parameter and activation gradients alike; callers zero the buffers.
// Forward outputs are overwritten (=). Row-major fp32 unless noted. (No
// gradient is produced here; params, m and v are updated in place.)
//
// Usage (one training step with global-norm clipping at 1.0):
//   double ss = sum_of_squares(grads, n);             // summed over all groups/ranks
//   float norm = static_cast<float>(std::sqrt(ss));
//   if (norm > 1.0f) scale(grads, n, 1.0f / (norm + 1e-6f));
//   adamw_update(params, grads, m, v, n, /*step=*/++step, cfg);

#ifndef CHUNKFLOW_KERNELS_CPU_OPTIMIZER_H_
#define CHUNKFLOW_KERNELS_CPU_OPTIMIZER_H_

#include <cstdint>

namespace chunkflow::kernels::cpu {

// torch.optim.AdamW defaults, except weight_decay (torch's default is 1e-2).
struct AdamWConfig {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // decoupled: p -= lr * weight_decay * p
};

// Exactly torch.optim.AdamW (single-tensor path, amsgrad=False), in its op order:
//   p *= 1 - lr * wd
//   m  = lerp(m, g, 1 - b1)                       (= b1 * m + (1 - b1) * g)
//   v  = v * b2 + (1 - b2) * g * g
//   denom = sqrt(v) / sqrt(1 - b2^step) + eps
//   p += -(lr / (1 - b1^step)) * m / denom
// Scalars are formed in double (as Python does) and rounded to fp32; the
// elementwise work is fp32. `step` is 1-based: the step count after this update.
void adamw_update(float* params,      // (n)
                  const float* grads, // (n)
                  float* m,           // (n) first moment, zero-initialized
                  float* v,           // (n) second moment, zero-initialized
                  int64_t n, int64_t step, const AdamWConfig& cfg);

// Plain SGD: p -= lr * g (no momentum, no weight decay).
void sgd_update(float* params,      // (n)
                const float* grads, // (n)
                int64_t n, float lr);

// sum_i x[i]^2, accumulated in double (for the global gradient norm).
double sum_of_squares(const float* x,  // (n)
                      int64_t n);

// x[i] *= factor (gradient clipping).
void scale(float* x,  // (n)
           int64_t n, float factor);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_OPTIMIZER_H_
