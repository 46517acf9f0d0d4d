#include "kernels/cpu/linear.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>

namespace chunkflow::kernels::cpu {
namespace {

constexpr int64_t kParallelThreshold = 1 << 14;  // elements
constexpr int64_t kColumnBlock = 64;             // columns per dbias work item

}  // namespace

void linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int64_t T, int64_t IC, int64_t OC) {
  if (T == 0 || OC == 0) return;
  // Seed out with the bias (beta = 1) or let the GEMM overwrite it (beta = 0).
  if (bias != nullptr) {
#pragma omp parallel for if (T * OC > kParallelThreshold)
    for (int64_t t = 0; t < T; ++t) std::memcpy(out + t * OC, bias, sizeof(float) * OC);
  }
  const float beta = bias != nullptr ? 1.0f : 0.0f;
  if (IC == 0) {
    if (bias == nullptr) std::memset(out, 0, sizeof(float) * T * OC);
    return;
  }
  // out (T, OC) = inp (T, IC) * weight^T (IC, OC) + beta * out.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(OC),
              static_cast<int>(IC), 1.0f, inp, static_cast<int>(IC), weight, static_cast<int>(IC),
              beta, out, static_cast<int>(OC));
}

void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int64_t T, int64_t IC, int64_t OC) {
  if (T == 0 || OC == 0) return;
  if (IC > 0) {
    if (dinp != nullptr) {
      // dinp (T, IC) += dout (T, OC) * weight (OC, IC).
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(T),
                  static_cast<int>(IC), static_cast<int>(OC), 1.0f, dout, static_cast<int>(OC),
                  weight, static_cast<int>(IC), 1.0f, dinp, static_cast<int>(IC));
    }
    // dweight (OC, IC) += dout^T (OC, T) * inp (T, IC).
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(OC),
                static_cast<int>(IC), static_cast<int>(T), 1.0f, dout, static_cast<int>(OC), inp,
                static_cast<int>(IC), 1.0f, dweight, static_cast<int>(IC));
  }
  if (dbias != nullptr) {
    // Column sums; threads own disjoint column blocks (race-free, deterministic).
    const int64_t n_blocks = (OC + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for if (T * OC > kParallelThreshold)
    for (int64_t b = 0; b < n_blocks; ++b) {
      const int64_t o0 = b * kColumnBlock;
      const int64_t o1 = std::min(OC, o0 + kColumnBlock);
      double acc[kColumnBlock] = {};
      for (int64_t t = 0; t < T; ++t) {
        const float* dy = dout + t * OC;
        for (int64_t o = o0; o < o1; ++o) acc[o - o0] += dy[o];
      }
      for (int64_t o = o0; o < o1; ++o) dbias[o] += static_cast<float>(acc[o - o0]);
    }
  }
}

}  // namespace chunkflow::kernels::cpu
