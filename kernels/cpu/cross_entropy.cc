#include "kernels/cpu/cross_entropy.h"

#include <cmath>

namespace chunkflow::kernels::cpu {
namespace {

constexpr int64_t kParallelThreshold = 1 << 14;  // elements

struct RowStats {
  float max;   // max_v x[v]
  double sum;  // sum_v exp(x[v] - max), >= 1
};

RowStats Stats(const float* x, int64_t V) {
  float m = x[0];
  for (int64_t v = 1; v < V; ++v) m = x[v] > m ? x[v] : m;
  double s = 0.0;
  for (int64_t v = 0; v < V; ++v) s += std::exp(x[v] - m);  // fp32 exp, double sum
  return {m, s};
}

}  // namespace

void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                           int64_t T, int64_t V) {
#pragma omp parallel for if (T * V > kParallelThreshold)
  for (int64_t t = 0; t < T; ++t) {
    if (targets[t] == kIgnoreIndex) {
      losses[t] = 0.0f;
      continue;
    }
    const float* x = logits + t * V;
    const RowStats st = Stats(x, V);
    // logsumexp - x[target] = log(sum) + (max - x[target]); the difference of
    // two fp32 values is formed in double so a large max does not cancel.
    const double loss =
        std::log(st.sum) + (static_cast<double>(st.max) - static_cast<double>(x[targets[t]]));
    losses[t] = static_cast<float>(loss);
  }
}

void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                            const float* dlosses, int64_t T, int64_t V) {
#pragma omp parallel for if (T * V > kParallelThreshold)
  for (int64_t t = 0; t < T; ++t) {
    if (targets[t] == kIgnoreIndex) continue;
    const float* x = logits + t * V;
    float* dx = dlogits + t * V;
    const RowStats st = Stats(x, V);
    const float inv_sum = static_cast<float>(1.0 / st.sum);
    const float d = dlosses[t];
    const int64_t target = targets[t];
    for (int64_t v = 0; v < V; ++v) {
      if (v == target) continue;
      dx[v] += d * (std::exp(x[v] - st.max) * inv_sum);
    }
    dx[target] += d * (std::exp(x[target] - st.max) * inv_sum - 1.0f);  // p - 1, then scale
  }
}

}  // namespace chunkflow::kernels::cpu
