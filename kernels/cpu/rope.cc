#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

namespace chunkflow::kernels::cpu {
namespace {

constexpr int64_t kParallelThreshold = 1 << 14;  // elements

// inv_freq[i] = 1 / theta^(2i / head_dim), every step in fp32 as in HF.
std::vector<float> InverseFrequencies(int64_t head_dim, float theta) {
  std::vector<float> inv_freq(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);  // float overload: powf
  }
  return inv_freq;
}

// cos/sin of (float)position * inv_freq[i] for i < half.
void Angles(float* cos_out, float* sin_out, int64_t position, const float* inv_freq,
            int64_t half) {
  const float p = static_cast<float>(position);
  for (int64_t i = 0; i < half; ++i) {
    const float angle = p * inv_freq[i];
    cos_out[i] = std::cos(angle);
    sin_out[i] = std::sin(angle);
  }
}

}  // namespace

namespace {

// Forward: out = rotate(inp, +angle). Backward: dinp += rotate(dout, -angle).
template <bool kBackward>
void Rotate(float* out, const float* inp, const int64_t* positions, int64_t T, int64_t n_heads,
            int64_t head_dim, float theta) {
  const int64_t half = head_dim / 2;
  const std::vector<float> inv_freq = InverseFrequencies(head_dim, theta);
#pragma omp parallel if (T * n_heads * head_dim > kParallelThreshold)
  {
    std::vector<float> cos_t(half), sin_t(half);
#pragma omp for
    for (int64_t t = 0; t < T; ++t) {
      Angles(cos_t.data(), sin_t.data(), positions[t], inv_freq.data(), half);
      for (int64_t h = 0; h < n_heads; ++h) {
        const float* x = inp + (t * n_heads + h) * head_dim;
        float* y = out + (t * n_heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = x[i];  // read both halves before writing (in place)
          const float x2 = x[i + half];
          if (kBackward) {
            y[i] += x1 * cos_t[i] + x2 * sin_t[i];
            y[i + half] += x2 * cos_t[i] - x1 * sin_t[i];
          } else {
            y[i] = x1 * cos_t[i] - x2 * sin_t[i];
            y[i + half] = x2 * cos_t[i] + x1 * sin_t[i];
          }
        }
      }
    }
  }
}

}  // namespace

void rope_forward(float* out, const float* inp, const int64_t* positions, int64_t T,
                  int64_t n_heads, int64_t head_dim, float theta) {
  Rotate<false>(out, inp, positions, T, n_heads, head_dim, theta);
}

void rope_backward(float* dinp, const float* dout, const int64_t* positions, int64_t T,
                   int64_t n_heads, int64_t head_dim, float theta) {
  Rotate<true>(dinp, dout, positions, T, n_heads, head_dim, theta);
}

}  // namespace chunkflow::kernels::cpu
