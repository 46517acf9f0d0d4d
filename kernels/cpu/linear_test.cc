#include "kernels/cpu/linear.h"

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

std::vector<double> ReferenceForward(const std::vector<float>& x, const std::vector<float>& w,
                                     const float* b, int64_t T, int64_t IC, int64_t OC) {
  std::vector<double> out(T * OC);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t o = 0; o < OC; ++o) {
      double s = b ? b[o] : 0.0;
      for (int64_t i = 0; i < IC; ++i) s += static_cast<double>(x[t * IC + i]) * w[o * IC + i];
      out[t * OC + o] = s;
    }
  }
  return out;
}

TEST(LinearForward, WithAndWithoutBias_MatchesDoubleReference) {
  const int64_t T = 128, IC = 96, OC = 160;  // T * OC above the OpenMP threshold
  std::vector<float> x = RandomVector(T * IC, 1);
  std::vector<float> w = RandomVector(OC * IC, 2, 0.1f);
  std::vector<float> b = RandomVector(OC, 3);
  std::vector<float> out(T * OC, 12345.0f);  // stale contents must not leak in
  linear_forward(out.data(), x.data(), w.data(), b.data(), T, IC, OC);
  std::vector<double> ref = ReferenceForward(x, w, b.data(), T, IC, OC);
  EXPECT_LT(RelativeError(out.data(), ref.data(), T * OC), 1e-6);

  std::fill(out.begin(), out.end(), 12345.0f);
  linear_forward(out.data(), x.data(), w.data(), nullptr, T, IC, OC);
  ref = ReferenceForward(x, w, nullptr, T, IC, OC);
  EXPECT_LT(RelativeError(out.data(), ref.data(), T * OC), 1e-6);
}

TEST(LinearBackward, AllGradients_MatchFiniteDifferences) {
  const int64_t T = 128, IC = 48, OC = 160;
  std::vector<float> x = RandomVector(T * IC, 10);
  std::vector<float> w = RandomVector(OC * IC, 11, 0.2f);
  std::vector<float> b = RandomVector(OC, 12);
  std::vector<float> r = RandomVector(T * OC, 13);
  std::vector<float> out(T * OC);
  auto objective = [&] {
    linear_forward(out.data(), x.data(), w.data(), b.data(), T, IC, OC);
    return WeightedSum(out.data(), r.data(), T * OC);
  };
  std::vector<float> dx(T * IC, 0.0f), dw(OC * IC, 0.0f), db(OC, 0.0f);
  linear_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), T, IC, OC);

  // The layer is linear in each argument: differences are exact but for rounding.
  std::vector<int64_t> ix = SampleIndices(T * IC, 64, 14);
  std::vector<double> fd = FiniteDifferenceGradient(objective, x.data(), ix, 1e-2f);
  EXPECT_LT(GradientRelativeError(dx.data(), ix, fd), 2e-4) << "dinp";
  std::vector<int64_t> iw = SampleIndices(OC * IC, 64, 15);
  fd = FiniteDifferenceGradient(objective, w.data(), iw, 1e-2f);
  EXPECT_LT(GradientRelativeError(dw.data(), iw, fd), 2e-4) << "dweight";
  std::vector<int64_t> ib = SampleIndices(OC, 64, 16);
  fd = FiniteDifferenceGradient(objective, b.data(), ib, 1e-2f);
  EXPECT_LT(GradientRelativeError(db.data(), ib, fd), 2e-4) << "dbias";
}

TEST(LinearBackward, PrefilledBuffers_Accumulate) {
  const int64_t T = 64, IC = 40, OC = 300;
  std::vector<float> x = RandomVector(T * IC, 20);
  std::vector<float> w = RandomVector(OC * IC, 21);
  std::vector<float> dy = RandomVector(T * OC, 22);
  std::vector<float> dx0(T * IC, 0.0f), dw0(OC * IC, 0.0f), db0(OC, 0.0f);
  linear_backward(dx0.data(), dw0.data(), db0.data(), dy.data(), x.data(), w.data(), T, IC, OC);
  std::vector<float> px = RandomVector(T * IC, 23), pw = RandomVector(OC * IC, 24),
                     pb = RandomVector(OC, 25);
  std::vector<float> dx = px, dw = pw, db = pb;
  linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), T, IC, OC);
  for (size_t i = 0; i < px.size(); ++i) px[i] += dx0[i];
  for (size_t i = 0; i < pw.size(); ++i) pw[i] += dw0[i];
  for (size_t i = 0; i < pb.size(); ++i) pb[i] += db0[i];
  EXPECT_LT(RelativeError(dx.data(), px.data(), T * IC), 1e-6);
  EXPECT_LT(RelativeError(dw.data(), pw.data(), OC * IC), 1e-6);
  EXPECT_LT(RelativeError(db.data(), pb.data(), OC), 1e-6);
}

// The first layer has no dinp and most projections have no bias.
TEST(LinearBackward, NullDinpAndDbias_OnlyWeightGradient) {
  const int64_t T = 16, IC = 8, OC = 12;
  std::vector<float> x = RandomVector(T * IC, 30);
  std::vector<float> w = RandomVector(OC * IC, 31);
  std::vector<float> dy = RandomVector(T * OC, 32);
  std::vector<float> dw_all(OC * IC, 0.0f), dx(T * IC, 0.0f), db(OC, 0.0f);
  linear_backward(dx.data(), dw_all.data(), db.data(), dy.data(), x.data(), w.data(), T, IC, OC);
  std::vector<float> dw(OC * IC, 0.0f);
  linear_backward(nullptr, dw.data(), nullptr, dy.data(), x.data(), w.data(), T, IC, OC);
  EXPECT_LT(RelativeError(dw.data(), dw_all.data(), OC * IC), 1e-6);
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
