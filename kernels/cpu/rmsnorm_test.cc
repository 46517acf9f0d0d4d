#include "kernels/cpu/rmsnorm.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"

namespace chunkflow::kernels::cpu {
namespace {

using testing::FiniteDifferenceGradient;
using testing::GradientRelativeError;
using testing::RandomVector;
using testing::RelativeError;
using testing::SampleIndices;
using testing::WeightedSum;

constexpr float kEps = 1e-6f;

// Naive double-precision reference of the forward pass.
void ReferenceForward(std::vector<double>& out, std::vector<double>& rstd,
                      const std::vector<float>& x, const std::vector<float>& w, int64_t T,
                      int64_t C, double eps) {
  out.assign(T * C, 0.0);
  rstd.assign(T, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0.0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(x[t * C + c]) * x[t * C + c];
    rstd[t] = 1.0 / std::sqrt(ss / C + eps);
    for (int64_t c = 0; c < C; ++c) out[t * C + c] = w[c] * x[t * C + c] * rstd[t];
  }
}

TEST(RmsnormForward, RandomInput_MatchesDoubleReference) {
  const int64_t T = 64, C = 512;  // above the OpenMP threshold
  std::vector<float> x = RandomVector(T * C, 1, 3.0f);
  std::vector<float> w = RandomVector(C, 2);
  std::vector<float> out(T * C), rstd(T);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, C, kEps);
  std::vector<double> ref_out, ref_rstd;
  ReferenceForward(ref_out, ref_rstd, x, w, T, C, kEps);
  EXPECT_LT(RelativeError(out.data(), ref_out.data(), T * C), 1e-6);
  EXPECT_LT(RelativeError(rstd.data(), ref_rstd.data(), T), 1e-6);
}

// Checks dinp and dweight against central differences of L = sum(out .* R).
void CheckGradients(int64_t T, int64_t C, uint64_t seed) {
  std::vector<float> x = RandomVector(T * C, seed);
  std::vector<float> w = RandomVector(C, seed + 1);
  std::vector<float> r = RandomVector(T * C, seed + 2);
  std::vector<float> out(T * C), rstd(T);
  auto objective = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, C, kEps);
    return WeightedSum(out.data(), r.data(), T * C);
  };
  objective();  // fills rstd for the backward pass
  std::vector<float> dx(T * C, 0.0f), dw(C, 0.0f);
  rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), T, C);

  std::vector<int64_t> ix = SampleIndices(T * C, 64, seed + 3);
  std::vector<double> fd_x = FiniteDifferenceGradient(objective, x.data(), ix, 1e-2f);
  EXPECT_LT(GradientRelativeError(dx.data(), ix, fd_x), 5e-4) << "dinp, T=" << T << " C=" << C;
  std::vector<int64_t> iw = SampleIndices(C, 64, seed + 4);
  std::vector<double> fd_w = FiniteDifferenceGradient(objective, w.data(), iw, 1e-2f);
  EXPECT_LT(GradientRelativeError(dw.data(), iw, fd_w), 5e-4) << "dweight, T=" << T << " C=" << C;
}

// Small C: the normalization term (the part through rstd) is large here.
TEST(RmsnormBackward, SmallRows_MatchesFiniteDifferences) { CheckGradients(6, 8, 10); }

TEST(RmsnormBackward, AboveThreadThreshold_MatchesFiniteDifferences) {
  CheckGradients(64, 512, 20);
}

TEST(RmsnormBackward, PrefilledBuffers_Accumulate) {
  const int64_t T = 48, C = 384;
  std::vector<float> x = RandomVector(T * C, 30);
  std::vector<float> w = RandomVector(C, 31);
  std::vector<float> dy = RandomVector(T * C, 32);
  std::vector<float> out(T * C), rstd(T);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), T, C, kEps);
  std::vector<float> dx0(T * C, 0.0f), dw0(C, 0.0f);
  rmsnorm_backward(dx0.data(), dw0.data(), dy.data(), x.data(), w.data(), rstd.data(), T, C);
  std::vector<float> px = RandomVector(T * C, 33), pw = RandomVector(C, 34);
  std::vector<float> dx = px, dw = pw;
  rmsnorm_backward(dx.data(), dw.data(), dy.data(), x.data(), w.data(), rstd.data(), T, C);
  for (int64_t i = 0; i < T * C; ++i) px[i] += dx0[i];
  for (int64_t i = 0; i < C; ++i) pw[i] += dw0[i];
  EXPECT_LT(RelativeError(dx.data(), px.data(), T * C), 1e-6);
  EXPECT_LT(RelativeError(dw.data(), pw.data(), C), 1e-6);
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
