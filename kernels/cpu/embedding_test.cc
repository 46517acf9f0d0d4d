#include "kernels/cpu/embedding.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"

namespace chunkflow::kernels::cpu {
namespace {

using testing::FiniteDifferenceGradient;
using testing::GradientRelativeError;
using testing::MaxAbsDiff;
using testing::RandomInts;
using testing::RandomVector;
using testing::RelativeError;
using testing::SampleIndices;
using testing::WeightedSum;

TEST(EmbeddingForward, RandomTokens_CopiesTableRowsExactly) {
  const int64_t T = 300, C = 96, V = 50;  // T * C above the OpenMP threshold
  std::vector<float> wte = RandomVector(V * C, 1);
  std::vector<int32_t> tokens = RandomInts(T, 0, V - 1, 2);
  std::vector<float> out(T * C, -7.0f);
  embedding_forward(out.data(), tokens.data(), wte.data(), T, C);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < C; ++c) {
      ASSERT_EQ(out[t * C + c], wte[tokens[t] * C + c]) << "t=" << t << " c=" << c;
    }
  }
}

// 16384 tokens over a vocabulary of 3: every row of dwte receives ~5500
// updates from every OpenMP thread's share of the tokens. A row-parallel
// kernel races here and loses updates (caught in most runs, not all: races
// are timing-dependent, hence 20 rounds of 8M adds).
TEST(EmbeddingBackward, RepeatedTokens_SumsEveryOccurrence) {
  const int64_t T = 16384, C = 512, V = 3;
  std::vector<int32_t> tokens = RandomInts(T, 0, V - 1, 3);
  std::vector<float> dout = RandomVector(T * C, 4);
  std::vector<double> expected(V * C, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t c = 0; c < C; ++c) expected[tokens[t] * C + c] += dout[t * C + c];
  }
  for (int round = 0; round < 20; ++round) {
    std::vector<float> dwte(V * C, 0.0f);
    embedding_backward(dwte.data(), dout.data(), tokens.data(), T, C);
    // fp32 sums of ~5500 N(0,1) terms are off by ~1e-4; a lost update by ~1.
    ASSERT_LT(MaxAbsDiff(dwte.data(), expected.data(), V * C), 1e-2) << "round " << round;
  }
}

TEST(EmbeddingBackward, PrefilledBuffer_Accumulates) {
  const int64_t T = 64, C = 300, V = 10;
  std::vector<int32_t> tokens = RandomInts(T, 0, V - 1, 5);
  std::vector<float> dout = RandomVector(T * C, 6);
  std::vector<float> fresh(V * C, 0.0f);
  embedding_backward(fresh.data(), dout.data(), tokens.data(), T, C);
  std::vector<float> prefill = RandomVector(V * C, 7);
  std::vector<float> dwte = prefill;
  embedding_backward(dwte.data(), dout.data(), tokens.data(), T, C);
  std::vector<float> expected(V * C);
  for (int64_t i = 0; i < V * C; ++i) expected[i] = prefill[i] + fresh[i];
  EXPECT_LT(RelativeError(dwte.data(), expected.data(), V * C), 1e-6);
}

// L = sum(out .* R); the lookup is linear, so central differences are exact up
// to fp32 rounding of L's terms.
TEST(EmbeddingBackward, Gradient_MatchesFiniteDifferences) {
  const int64_t T = 40, C = 16, V = 12;
  std::vector<int32_t> tokens = RandomInts(T, 0, V - 1, 8);
  std::vector<float> wte = RandomVector(V * C, 9);
  std::vector<float> r = RandomVector(T * C, 10);
  std::vector<float> out(T * C);
  auto objective = [&] {
    embedding_forward(out.data(), tokens.data(), wte.data(), T, C);
    return WeightedSum(out.data(), r.data(), T * C);
  };
  std::vector<float> dwte(V * C, 0.0f);
  embedding_backward(dwte.data(), r.data(), tokens.data(), T, C);
  std::vector<int64_t> idx = SampleIndices(V * C, 1000, 11);  // all of them
  std::vector<double> fd = FiniteDifferenceGradient(objective, wte.data(), idx, 1e-2f);
  EXPECT_LT(GradientRelativeError(dwte.data(), idx, fd), 1e-4);
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
