#include "kernels/cpu/swiglu.h"

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

TEST(SwigluForward, RandomAndExtremeGates_MatchesDoubleReference) {
  const int64_t N = 40000;  // above the OpenMP threshold
  std::vector<float> gate = RandomVector(N, 1, 3.0f);
  std::vector<float> up = RandomVector(N, 2);
  // Saturated sigmoid on both sides: no NaN or inf may appear.
  gate[0] = -1000.0f;
  gate[1] = 1000.0f;
  gate[2] = -90.0f;
  gate[3] = 90.0f;
  std::vector<float> out(N);
  swiglu_forward(out.data(), gate.data(), up.data(), N);
  std::vector<double> ref(N);
  for (int64_t n = 0; n < N; ++n) {
    const double g = gate[n];
    ref[n] = g / (1.0 + std::exp(-g)) * up[n];
  }
  for (int64_t n = 0; n < 4; ++n) EXPECT_TRUE(std::isfinite(out[n])) << "n=" << n;
  EXPECT_LT(RelativeError(out.data(), ref.data(), N), 1e-6);
}

TEST(SwigluBackward, BothGradients_MatchFiniteDifferences) {
  const int64_t N = 20000;
  std::vector<float> gate = RandomVector(N, 3, 2.0f);
  std::vector<float> up = RandomVector(N, 4);
  std::vector<float> r = RandomVector(N, 5);
  std::vector<float> out(N);
  auto objective = [&] {
    swiglu_forward(out.data(), gate.data(), up.data(), N);
    return WeightedSum(out.data(), r.data(), N);
  };
  std::vector<float> dgate(N, 0.0f), dup(N, 0.0f);
  swiglu_backward(dgate.data(), dup.data(), r.data(), gate.data(), up.data(), N);
  std::vector<int64_t> idx = SampleIndices(N, 200, 6);
  std::vector<double> fd = FiniteDifferenceGradient(objective, gate.data(), idx, 1e-2f);
  EXPECT_LT(GradientRelativeError(dgate.data(), idx, fd), 5e-4) << "dgate";
  fd = FiniteDifferenceGradient(objective, up.data(), idx, 1e-2f);
  EXPECT_LT(GradientRelativeError(dup.data(), idx, fd), 5e-4) << "dup";
}

TEST(SwigluBackward, PrefilledBuffers_Accumulate) {
  const int64_t N = 30000;
  std::vector<float> gate = RandomVector(N, 7), up = RandomVector(N, 8), dy = RandomVector(N, 9);
  std::vector<float> dg0(N, 0.0f), du0(N, 0.0f);
  swiglu_backward(dg0.data(), du0.data(), dy.data(), gate.data(), up.data(), N);
  std::vector<float> pg = RandomVector(N, 10), pu = RandomVector(N, 11);
  std::vector<float> dg = pg, du = pu;
  swiglu_backward(dg.data(), du.data(), dy.data(), gate.data(), up.data(), N);
  for (int64_t n = 0; n < N; ++n) {
    pg[n] += dg0[n];
    pu[n] += du0[n];
  }
  EXPECT_LT(RelativeError(dg.data(), pg.data(), N), 1e-6);
  EXPECT_LT(RelativeError(du.data(), pu.data(), N), 1e-6);
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
