#include "kernels/cpu/optimizer.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"

namespace chunkflow::kernels::cpu {
namespace {

using testing::RandomVector;
using testing::RelativeError;

// AdamW as written in the torch.optim.AdamW docs, in double.
struct ReferenceAdamW {
  std::vector<double> p, m, v;
  void Step(const std::vector<float>& g, int64_t step, const AdamWConfig& c) {
    const double lr = c.lr, b1 = c.beta1, b2 = c.beta2, eps = c.eps, wd = c.weight_decay;
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] -= lr * wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * static_cast<double>(g[i]) * g[i];
      const double m_hat = m[i] / (1 - std::pow(b1, step));
      const double v_hat = v[i] / (1 - std::pow(b2, step));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

// Runs 6 steps of both and compares the total parameter change (so the test
// sees the update itself, not the much larger parameters) and the moments.
void CheckAdamW(const AdamWConfig& cfg, float grad_scale, uint64_t seed) {
  const int64_t n = 50000;  // above the OpenMP threshold
  std::vector<float> p0 = RandomVector(n, seed);
  std::vector<float> p = p0, m(n, 0.0f), v(n, 0.0f);
  ReferenceAdamW ref{std::vector<double>(p0.begin(), p0.end()), std::vector<double>(n, 0.0),
                     std::vector<double>(n, 0.0)};
  for (int64_t step = 1; step <= 6; ++step) {
    std::vector<float> g = RandomVector(n, seed + 100 * step, grad_scale);
    adamw_update(p.data(), g.data(), m.data(), v.data(), n, step, cfg);
    ref.Step(g, step, cfg);
  }
  std::vector<float> delta(n);
  std::vector<double> ref_delta(n);
  for (int64_t i = 0; i < n; ++i) {
    delta[i] = p[i] - p0[i];
    ref_delta[i] = ref.p[i] - p0[i];
  }
  EXPECT_LT(RelativeError(delta.data(), ref_delta.data(), n), 1e-4) << "update";
  EXPECT_LT(RelativeError(m.data(), ref.m.data(), n), 1e-5) << "first moment";
  EXPECT_LT(RelativeError(v.data(), ref.v.data(), n), 1e-5) << "second moment";
}

TEST(AdamwUpdate, SeveralStepsWithWeightDecay_MatchesFormulaInDouble) {
  AdamWConfig cfg;
  cfg.lr = 1e-2f;
  cfg.weight_decay = 0.1f;
  CheckAdamW(cfg, 1.0f, 1);
}

// Gradients of the size of eps, so a misplaced or missing eps shows.
TEST(AdamwUpdate, GradientsNearEps_MatchesFormulaInDouble) {
  AdamWConfig cfg;
  cfg.lr = 3e-3f;
  cfg.beta1 = 0.8f;
  cfg.beta2 = 0.95f;
  cfg.eps = 1e-3f;
  cfg.weight_decay = 0.5f;
  CheckAdamW(cfg, 1e-3f, 2);
}

// At step 1 the bias corrections make the update -lr * g / (|g| + eps).
TEST(AdamwUpdate, FirstStep_MovesByLearningRate) {
  AdamWConfig cfg;
  cfg.lr = 0.05f;
  float p[2] = {1.0f, -2.0f};
  const float g[2] = {3.0f, -0.5f};
  float m[2] = {0.0f, 0.0f}, v[2] = {0.0f, 0.0f};
  adamw_update(p, g, m, v, 2, 1, cfg);
  EXPECT_NEAR(p[0], 1.0f - 0.05f, 1e-6f);
  EXPECT_NEAR(p[1], -2.0f + 0.05f, 1e-6f);
}

TEST(SgdUpdate, SeveralSteps_MatchesFormulaInDouble) {
  const int64_t n = 40000;
  const float lr = 0.03f;
  std::vector<float> p = RandomVector(n, 10);
  std::vector<double> ref(p.begin(), p.end());
  for (int step = 0; step < 4; ++step) {
    std::vector<float> g = RandomVector(n, 11 + step);
    sgd_update(p.data(), g.data(), n, lr);
    for (int64_t i = 0; i < n; ++i) ref[i] -= static_cast<double>(lr) * g[i];
  }
  EXPECT_LT(RelativeError(p.data(), ref.data(), n), 1e-6);
}

TEST(SumOfSquares, LargeVector_MatchesDoubleSum) {
  const int64_t n = (1 << 20) + 3;  // above the threshold, odd tail
  std::vector<float> x = RandomVector(n, 20, 1e3f);
  double ref = 0.0;
  for (float e : x) ref += static_cast<double>(e) * e;
  EXPECT_NEAR(sum_of_squares(x.data(), n), ref, 1e-12 * ref);
  EXPECT_EQ(sum_of_squares(x.data(), 0), 0.0);
}

TEST(Scale, LargeVector_MultipliesEveryElement) {
  const int64_t n = 50001;
  std::vector<float> x = RandomVector(n, 30);
  std::vector<float> expected(n);
  for (int64_t i = 0; i < n; ++i) expected[i] = x[i] * 0.25f;
  scale(x.data(), n, 0.25f);
  EXPECT_EQ(x, expected);
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
