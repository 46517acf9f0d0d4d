#include "kernels/cpu/rope.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"

namespace chunkflow::kernels::cpu {
namespace {

using testing::FiniteDifferenceGradient;
using testing::GradientRelativeError;
using testing::MaxAbsDiff;
using testing::RandomVector;
using testing::RelativeError;
using testing::SampleIndices;
using testing::WeightedSum;

// Reference rotation. fp32_angles = true follows HF step by step (inv_freq and
// angle in fp32, cos/sin of that fp32 angle); false is the exact math in double.
std::vector<double> Reference(const std::vector<float>& x, const std::vector<int64_t>& pos,
                              int64_t T, int64_t H, int64_t D, float theta, bool fp32_angles) {
  std::vector<double> out(T * H * D);
  const int64_t half = D / 2;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      double angle;
      if (fp32_angles) {
        const float inv_freq =
            1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(D));
        angle = static_cast<float>(pos[t]) * inv_freq;
      } else {
        angle = pos[t] / std::pow(static_cast<double>(theta), 2.0 * i / D);
      }
      // HF takes cos/sin in fp32: round them before the products.
      const double c = fp32_angles ? static_cast<float>(std::cos(angle)) : std::cos(angle);
      const double s = fp32_angles ? static_cast<float>(std::sin(angle)) : std::sin(angle);
      for (int64_t h = 0; h < H; ++h) {
        const int64_t base = (t * H + h) * D;
        const double x1 = x[base + i], x2 = x[base + i + half];
        out[base + i] = x1 * c - x2 * s;
        out[base + i + half] = x2 * c + x1 * s;
      }
    }
  }
  return out;
}

std::vector<int64_t> Positions(int64_t T, int64_t first) {
  std::vector<int64_t> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = first + t;
  return pos;
}

TEST(RopeForward, SmallPositions_MatchesExactRotation) {
  const int64_t T = 32, H = 4, D = 64;
  std::vector<float> x = RandomVector(T * H * D, 1);
  std::vector<int64_t> pos = Positions(T, 0);
  std::vector<float> out(T * H * D);
  rope_forward(out.data(), x.data(), pos.data(), T, H, D, 10000.0f);
  std::vector<double> ref = Reference(x, pos, T, H, D, 10000.0f, /*fp32_angles=*/false);
  EXPECT_LT(RelativeError(out.data(), ref.data(), T * H * D), 1e-5);
}

// At position ~16000 the fp32 angle differs from the exact one by up to ~1e-3
// rad. The kernel must reproduce HF's fp32 arithmetic, not the exact math.
TEST(RopeForward, LargePositions_MatchesHfFp32Formula) {
  const int64_t T = 128, H = 4, D = 128;  // above the OpenMP threshold
  const float theta = 1000000.0f;         // Qwen2's rope_theta
  std::vector<float> x = RandomVector(T * H * D, 2);
  std::vector<int64_t> pos = Positions(T, 16000);
  std::vector<float> out(T * H * D);
  rope_forward(out.data(), x.data(), pos.data(), T, H, D, theta);
  std::vector<double> hf = Reference(x, pos, T, H, D, theta, /*fp32_angles=*/true);
  std::vector<float> hf_f(hf.begin(), hf.end());
  EXPECT_LT(MaxAbsDiff(out.data(), hf_f.data(), T * H * D), 2e-6);
  // The check above can tell the two apart: the exact rotation is far away.
  std::vector<double> exact = Reference(x, pos, T, H, D, theta, /*fp32_angles=*/false);
  std::vector<float> exact_f(exact.begin(), exact.end());
  EXPECT_GT(MaxAbsDiff(hf_f.data(), exact_f.data(), T * H * D), 1e-4);
}

TEST(RopeForward, InPlace_MatchesOutOfPlaceBitForBit) {
  const int64_t T = 64, H = 8, D = 64;
  std::vector<float> x = RandomVector(T * H * D, 3);
  std::vector<int64_t> pos = Positions(T, 100);
  std::vector<float> out(T * H * D);
  rope_forward(out.data(), x.data(), pos.data(), T, H, D, 10000.0f);
  rope_forward(x.data(), x.data(), pos.data(), T, H, D, 10000.0f);
  EXPECT_EQ(x, out);
}

TEST(RopeBackward, Gradient_MatchesFiniteDifferences) {
  const int64_t T = 64, H = 4, D = 128;  // above the OpenMP threshold
  std::vector<float> x = RandomVector(T * H * D, 4);
  std::vector<float> r = RandomVector(T * H * D, 5);
  std::vector<int64_t> pos = Positions(T, 16000 - T / 2);
  std::vector<float> out(T * H * D);
  auto objective = [&] {
    rope_forward(out.data(), x.data(), pos.data(), T, H, D, 1000000.0f);
    return WeightedSum(out.data(), r.data(), T * H * D);
  };
  std::vector<float> dx(T * H * D, 0.0f);
  rope_backward(dx.data(), r.data(), pos.data(), T, H, D, 1000000.0f);
  std::vector<int64_t> idx = SampleIndices(T * H * D, 128, 6);
  std::vector<double> fd = FiniteDifferenceGradient(objective, x.data(), idx, 1e-2f);
  EXPECT_LT(GradientRelativeError(dx.data(), idx, fd), 1e-4);
}

TEST(RopeBackward, PrefilledBuffer_Accumulates) {
  const int64_t T = 16, H = 2, D = 32;
  std::vector<float> dy = RandomVector(T * H * D, 7);
  std::vector<int64_t> pos = Positions(T, 5);
  std::vector<float> fresh(T * H * D, 0.0f);
  rope_backward(fresh.data(), dy.data(), pos.data(), T, H, D, 10000.0f);
  std::vector<float> prefill = RandomVector(T * H * D, 8);
  std::vector<float> dx = prefill;
  rope_backward(dx.data(), dy.data(), pos.data(), T, H, D, 10000.0f);
  for (size_t i = 0; i < prefill.size(); ++i) prefill[i] += fresh[i];
  EXPECT_LT(RelativeError(dx.data(), prefill.data(), T * H * D), 1e-6);
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
