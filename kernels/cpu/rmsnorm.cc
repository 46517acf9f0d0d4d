#include "kernels/cpu/rmsnorm.h"

#include <algorithm>
#include <cmath>

namespace chunkflow::kernels::cpu {
namespace {

constexpr int64_t kParallelThreshold = 1 << 14;  // elements
constexpr int64_t kColumnBlock = 64;             // columns per dweight work item

}  // namespace

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int64_t T,
                     int64_t C, float eps) {
#pragma omp parallel for if (T * C > kParallelThreshold)
  for (int64_t t = 0; t < T; ++t) {
    const float* x = inp + t * C;
    float* y = out + t * C;
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(x[c]) * x[c];
    const float r = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(C) + eps));
    // HF order: (x * rstd), then weight * that.
    for (int64_t c = 0; c < C; ++c) y[c] = weight[c] * (x[c] * r);
    rstd[t] = r;
  }
}

void rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                      const float* weight, const float* rstd, int64_t T, int64_t C) {
  const bool parallel = T * C > kParallelThreshold;

  // dinp: rows are independent.
#pragma omp parallel for if (parallel)
  for (int64_t t = 0; t < T; ++t) {
    const float* x = inp + t * C;
    const float* dy = dout + t * C;
    float* dx = dinp + t * C;
    const float r = rstd[t];
    double dot = 0.0;  // sum_c dy * w * x
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dy[c]) * weight[c] * x[c];
    const float k = static_cast<float>(dot / static_cast<double>(C)) * r * r;
    for (int64_t c = 0; c < C; ++c) dx[c] += r * (dy[c] * weight[c] - x[c] * k);
  }

  // dweight: each thread owns a block of columns and walks every row.
  const int64_t n_blocks = (C + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for if (parallel)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = b * kColumnBlock;
    const int64_t c1 = std::min(C, c0 + kColumnBlock);
    double acc[kColumnBlock] = {};
    for (int64_t t = 0; t < T; ++t) {
      const float* x = inp + t * C;
      const float* dy = dout + t * C;
      const float r = rstd[t];
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += static_cast<double>(dy[c]) * (x[c] * r);
    }
    for (int64_t c = c0; c < c1; ++c) dweight[c] += static_cast<float>(acc[c - c0]);
  }
}

}  // namespace chunkflow::kernels::cpu
