#include "kernels/cpu/cross_entropy.h"

#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"

namespace chunkflow::kernels::cpu {
namespace {

using testing::FiniteDifferenceGradient;
using testing::GradientRelativeError;
using testing::RandomInts;
using testing::RandomVector;
using testing::RelativeError;
using testing::SampleIndices;
using testing::WeightedSum;

// Naive double reference: losses and dlosses-weighted (softmax - onehot).
void Reference(std::vector<double>& losses, std::vector<double>& dlogits,
               const std::vector<float>& logits, const std::vector<int32_t>& targets,
               const std::vector<float>& dlosses, int64_t T, int64_t V) {
  losses.assign(T, 0.0);
  dlogits.assign(T * V, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    if (targets[t] == kIgnoreIndex) continue;
    const float* x = logits.data() + t * V;
    double m = x[0];
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<double>(x[v]));
    double s = 0.0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(x[v] - m);
    const double lse = m + std::log(s);
    losses[t] = lse - x[targets[t]];
    for (int64_t v = 0; v < V; ++v) {
      dlogits[t * V + v] = dlosses[t] * (std::exp(x[v] - lse) - (v == targets[t] ? 1.0 : 0.0));
    }
  }
}

// Every fourth target is ignored.
std::vector<int32_t> Targets(int64_t T, int64_t V, uint64_t seed) {
  std::vector<int32_t> targets = RandomInts(T, 0, static_cast<int32_t>(V - 1), seed);
  for (int64_t t = 0; t < T; t += 4) targets[t] = kIgnoreIndex;
  return targets;
}

// Logits around +1000 would overflow exp without the max subtraction.
TEST(CrossEntropy, LargeOffsetLogits_MatchDoubleReference) {
  const int64_t T = 64, V = 1024;  // above the OpenMP threshold
  std::vector<float> logits = RandomVector(T * V, 1, 4.0f);
  for (float& x : logits) x += 1000.0f;
  std::vector<int32_t> targets = Targets(T, V, 2);
  std::vector<float> dlosses = RandomVector(T, 3);
  std::vector<float> losses(T, -1.0f), dlogits(T * V, 0.0f);
  cross_entropy_forward(losses.data(), logits.data(), targets.data(), T, V);
  cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), dlosses.data(), T, V);
  std::vector<double> ref_losses, ref_dlogits;
  Reference(ref_losses, ref_dlogits, logits, targets, dlosses, T, V);
  EXPECT_LT(RelativeError(losses.data(), ref_losses.data(), T), 1e-6);
  EXPECT_LT(RelativeError(dlogits.data(), ref_dlogits.data(), T * V), 1e-6);
  for (int64_t t = 0; t < T; t += 4) EXPECT_EQ(losses[t], 0.0f) << "ignored t=" << t;
}

TEST(CrossEntropyBackward, Gradient_MatchesFiniteDifferences) {
  const int64_t T = 12, V = 24;  // small V: softmax entries are large vs FD noise
  std::vector<float> logits = RandomVector(T * V, 10, 2.0f);
  std::vector<int32_t> targets = Targets(T, V, 11);
  std::vector<float> dlosses = RandomVector(T, 12);
  std::vector<float> losses(T);
  auto objective = [&] {
    cross_entropy_forward(losses.data(), logits.data(), targets.data(), T, V);
    return WeightedSum(losses.data(), dlosses.data(), T);
  };
  std::vector<float> dlogits(T * V, 0.0f);
  cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), dlosses.data(), T, V);
  std::vector<int64_t> idx = SampleIndices(T * V, T * V, 13);  // every entry
  std::vector<double> fd = FiniteDifferenceGradient(objective, logits.data(), idx, 1e-2f);
  EXPECT_LT(GradientRelativeError(dlogits.data(), idx, fd), 5e-4);
}

TEST(CrossEntropyBackward, PrefilledBuffer_AccumulatesAndSkipsIgnoredRows) {
  const int64_t T = 32, V = 700;  // above the OpenMP threshold
  std::vector<float> logits = RandomVector(T * V, 20, 3.0f);
  std::vector<int32_t> targets = Targets(T, V, 21);
  std::vector<float> dlosses = RandomVector(T, 22);
  std::vector<float> fresh(T * V, 0.0f);
  cross_entropy_backward(fresh.data(), logits.data(), targets.data(), dlosses.data(), T, V);
  std::vector<float> prefill = RandomVector(T * V, 23);
  std::vector<float> dlogits = prefill;
  cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), dlosses.data(), T, V);
  for (int64_t t = 0; t < T; ++t) {
    if (targets[t] != kIgnoreIndex) continue;
    for (int64_t v = 0; v < V; ++v) {
      ASSERT_EQ(dlogits[t * V + v], prefill[t * V + v]) << "ignored row " << t << " touched";
    }
  }
  for (size_t i = 0; i < prefill.size(); ++i) prefill[i] += fresh[i];
  EXPECT_LT(RelativeError(dlogits.data(), prefill.data(), T * V), 1e-6);
}

TEST(CrossEntropyForward, AllIgnored_ZeroLossesOverwritten) {
  const int64_t T = 3, V = 5;
  std::vector<float> logits = RandomVector(T * V, 30);
  std::vector<int32_t> targets(T, kIgnoreIndex);
  std::vector<float> losses(T, 42.0f);
  cross_entropy_forward(losses.data(), logits.data(), targets.data(), T, V);
  EXPECT_EQ(losses, std::vector<float>(T, 0.0f));
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
