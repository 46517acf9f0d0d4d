#include "kernels/cpu/optimizer.h"

#include <cmath>

namespace chunkflow::kernels::cpu {
namespace {

constexpr int64_t kParallelThreshold = 1 << 14;  // elements

// torch's CPU lerp: the two-sided form keeps it exact at weight 0 and 1.
inline float Lerp(float self, float end, float weight) {
  return weight < 0.5f ? self + weight * (end - self) : end - (end - self) * (1.0f - weight);
}

}  // namespace

void adamw_update(float* params, const float* grads, float* m, float* v, int64_t n,
                  int64_t step, const AdamWConfig& cfg) {
  // Python-side scalars, in double, as torch's _single_tensor_adamw forms them.
  const double lr = cfg.lr;
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(cfg.beta1), step);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(cfg.beta2), step);
  const float decay = static_cast<float>(1.0 - lr * cfg.weight_decay);
  const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float w1 = static_cast<float>(1.0 - static_cast<double>(cfg.beta1));
  const float b2 = cfg.beta2;
  const float w2 = static_cast<float>(1.0 - static_cast<double>(cfg.beta2));
  const float eps = cfg.eps;

#pragma omp parallel for if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    const float g = grads[i];
    float p = params[i] * decay;                     // param.mul_(1 - lr * wd)
    const float mi = Lerp(m[i], g, w1);              // exp_avg.lerp_(grad, 1 - beta1)
    const float vi = v[i] * b2 + w2 * g * g;         // exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
    const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
    p = p + neg_step_size * mi / denom;              // param.addcdiv_(m, denom, -step_size)
    params[i] = p;
    m[i] = mi;
    v[i] = vi;
  }
}

void sgd_update(float* params, const float* grads, int64_t n, float lr) {
  const float neg_lr = -lr;
#pragma omp parallel for if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) params[i] += neg_lr * grads[i];  // param.add_(g, alpha=-lr)
}

double sum_of_squares(const float* x, int64_t n) {
  double s = 0.0;
#pragma omp parallel for reduction(+ : s) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

void scale(float* x, int64_t n, float factor) {
#pragma omp parallel for if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

}  // namespace chunkflow::kernels::cpu
