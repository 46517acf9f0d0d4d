#include "kernels/cpu/swiglu.h"

#include <cmath>

namespace chunkflow::kernels::cpu {
namespace {

constexpr int64_t kParallelThreshold = 1 << 14;  // elements

// 1 / (1 + e^-x); saturates cleanly to 0 (e^-x = inf) and 1 at the extremes.
inline float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

void swiglu_forward(float* out, const float* gate, const float* up, int64_t N) {
#pragma omp parallel for if (N > kParallelThreshold)
  for (int64_t n = 0; n < N; ++n) {
    const float g = gate[n];
    out[n] = g * Sigmoid(g) * up[n];
  }
}

void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                     const float* up, int64_t N) {
#pragma omp parallel for if (N > kParallelThreshold)
  for (int64_t n = 0; n < N; ++n) {
    const float g = gate[n];
    const float s = Sigmoid(g);
    const float silu = g * s;
    const float dsilu = s * (1.0f + g * (1.0f - s));  // d/dg of g * sigmoid(g)
    dgate[n] += dout[n] * up[n] * dsilu;
    dup[n] += dout[n] * silu;
  }
}

}  // namespace chunkflow::kernels::cpu
