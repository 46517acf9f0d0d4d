#include "coordinator/planner/cost_fit.h"

#include <cmath>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chunkflow::planner {
namespace {

using ::testing::HasSubstr;

CostModel Prior(int32_t pp) {
  CostModel m;
  for (int32_t s = 0; s < pp; ++s) m.stages.push_back({1e-6, 1e-10, 1e-3});
  m.backward_ratio = 2.0;
  return m;
}

// Forward and backward samples of random chunk shapes timed by `truth`,
// with multiplicative noise of +-`noise`.
std::vector<OpSample> Samples(const CostModel& truth, int n, double noise, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> tok(64, 16384);
  std::uniform_real_distribution<double> jitter(1 - noise, 1 + noise);
  std::vector<OpSample> out;
  for (int i = 0; i < n; ++i) {
    for (int32_t s = 0; s < static_cast<int32_t>(truth.stages.size()); ++s) {
      const int64_t t = tok(rng), offset = tok(rng) * (i % 3);
      OpSample f{s, false, t, t * offset + t * (t + 1) / 2, 0};
      const StageCost& c = truth.stages[s];
      const double fwd = c.linear_s_per_token * f.tokens +
                         c.quadratic_s_per_pair * f.attention_pairs + c.fixed_s;
      f.seconds = fwd * jitter(rng);
      OpSample b = f;
      b.backward = true;
      b.seconds = truth.backward_ratio * fwd * jitter(rng);
      out.push_back(f);
      out.push_back(b);
    }
  }
  return out;
}

CostModel Truth() {
  CostModel t;
  t.stages = {{3e-6, 2e-10, 5e-3}, {2.5e-6, 2e-10, 0}};  // stage 1 has no fixed cost
  t.backward_ratio = 2.3;
  return t;
}

TEST(FitCostModel, ExactTimes_RecoverTheCoefficients) {
  const CostModel truth = Truth();
  absl::StatusOr<CostModel> fit = FitCostModel(Samples(truth, 40, 0.0, 1), Prior(2), {});
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (int s = 0; s < 2; ++s) {
    EXPECT_NEAR(fit->stages[s].linear_s_per_token, truth.stages[s].linear_s_per_token, 1e-9);
    EXPECT_NEAR(fit->stages[s].quadratic_s_per_pair, truth.stages[s].quadratic_s_per_pair, 1e-14);
    EXPECT_NEAR(fit->stages[s].fixed_s, truth.stages[s].fixed_s, 1e-6);
  }
  EXPECT_NEAR(fit->backward_ratio, 2.3, 1e-9);
}

TEST(FitCostModel, NoisyTimes_CoefficientsNonNegativeAndPredictionsClose) {
  const CostModel truth = Truth();
  const std::vector<OpSample> samples = Samples(truth, 200, 0.05, 2);
  absl::StatusOr<CostModel> fit = FitCostModel(samples, Prior(2), {});
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (const StageCost& c : fit->stages) {
    EXPECT_GE(c.linear_s_per_token, 0);
    EXPECT_GE(c.quadratic_s_per_pair, 0);
    EXPECT_GE(c.fixed_s, 0);
  }
  EXPECT_NEAR(fit->backward_ratio, 2.3, 0.05);
  // Predictions of fresh shapes within a few percent of the truth.
  for (const OpSample& s : Samples(truth, 20, 0.0, 3)) {
    if (s.backward) continue;
    const StageCost& f = fit->stages[s.stage];
    const double got = f.linear_s_per_token * s.tokens + f.quadratic_s_per_pair * s.attention_pairs +
                       f.fixed_s;
    EXPECT_NEAR(got, s.seconds, 0.05 * s.seconds);
  }
}

TEST(FitCostModel, TooFewSamples_KeepsThePrior) {
  const CostModel prior = Prior(2);
  std::vector<OpSample> samples = Samples(Truth(), 3, 0.0, 4);  // 3 forwards per stage
  absl::StatusOr<CostModel> fit = FitCostModel(samples, prior, {});
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->stages[0].linear_s_per_token, prior.stages[0].linear_s_per_token);
  EXPECT_EQ(fit->stages[1].fixed_s, prior.stages[1].fixed_s);
  // The backwards are not measured against the prior's forwards either.
  EXPECT_EQ(fit->backward_ratio, prior.backward_ratio);
}

// A prior 1000x too slow (a CPU rate on a GPU): the stage with enough
// forwards is refitted and its backwards give the ratio; the stage still
// on the prior does not drag it towards 0.002.
TEST(FitCostModel, BackwardRatio_FromTheRefittedStagesOnly) {
  CostModel prior = Prior(2);
  for (StageCost& c : prior.stages) {
    c.linear_s_per_token *= 1000;
    c.quadratic_s_per_pair *= 1000;
    c.fixed_s *= 1000;
  }
  std::vector<OpSample> samples;
  for (const OpSample& s : Samples(Truth(), 20, 0.0, 5)) {
    if (s.stage == 0) samples.push_back(s);
  }
  for (const OpSample& s : Samples(Truth(), 3, 0.0, 6)) {
    if (s.stage == 1) samples.push_back(s);  // 3 forwards: stage 1 keeps the prior
  }
  absl::StatusOr<CostModel> fit = FitCostModel(samples, prior, {});
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_EQ(fit->stages[1].fixed_s, prior.stages[1].fixed_s);
  EXPECT_NEAR(fit->backward_ratio, Truth().backward_ratio, 1e-3);
}

TEST(FitCostModel, OneShapeOnly_ScalesThePrior) {
  const CostModel prior = Prior(1);
  std::vector<OpSample> samples;
  for (int i = 0; i < 10; ++i) samples.push_back({0, false, 1000, 500500, 0.0});
  // The prior predicts 1e-3 + 1e-3 + 5.005e-5 s; the device is 3x slower.
  const double p = 1e-6 * 1000 + 1e-10 * 500500 + 1e-3;
  for (OpSample& s : samples) s.seconds = 3 * p;
  absl::StatusOr<CostModel> fit = FitCostModel(samples, prior, {});
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_NEAR(fit->stages[0].linear_s_per_token, 3e-6, 1e-12);
  EXPECT_NEAR(fit->stages[0].quadratic_s_per_pair, 3e-10, 1e-16);
  EXPECT_NEAR(fit->stages[0].fixed_s, 3e-3, 1e-9);
}

TEST(FitCostModel, BadSamples_InvalidArgumentNamingThem) {
  std::vector<OpSample> samples = {{0, false, 10, 55, 0.1}, {2, false, 10, 55, 0.1}};
  absl::StatusOr<CostModel> fit = FitCostModel(samples, Prior(2), {});
  EXPECT_EQ(fit.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(fit.status().message()), HasSubstr("sample 1: stage 2"));
  samples = {{0, false, 10, 55, -1.0}};
  fit = FitCostModel(samples, Prior(2), {});
  EXPECT_EQ(fit.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(fit.status().message()), HasSubstr("seconds -1"));
  samples = {{0, false, 10, 55, std::nan("")}};
  EXPECT_EQ(FitCostModel(samples, Prior(2), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chunkflow::planner
