#include "coordinator/planner/balance.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "coordinator/planner/chunking.h"
#include "coordinator/planner/test_util.h"
#include "gtest/gtest.h"

namespace chunkflow::planner {
namespace {

double MaxOverMean(const std::vector<double>& loads) {
  const double mean = std::accumulate(loads.begin(), loads.end(), 0.0) / loads.size();
  return *std::max_element(loads.begin(), loads.end()) / mean;
}

TEST(AssignRanks, ChainsStayTogether) {
  std::vector<Chunk> chunks =
      *BuildChunks(std::vector<Sequence>{{0, 95}, {1, 3}, {2, 41}, {3, 7}}, 10);
  CostModel cost = testing::UniformCost(2, 1e-3, 1e-5);
  ASSERT_TRUE(AssignRanks(cost, 3, 2, false, Balance::kCostModel, &chunks).ok());
  for (const Chunk& c : chunks) {
    ASSERT_GE(c.dp, 0);
    if (c.prev >= 0) EXPECT_EQ(c.dp, chunks[c.prev].dp);
  }
}

TEST(AssignRanks, CostModel_BeatsInOrderOnLongTail) {
  CostModel cost = testing::UniformCost(1, 1e-6, 1e-9);
  double lpt = 0, in_order = 0;
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    std::vector<Chunk> a = *BuildChunks(testing::RandomBatch(seed, 512, 32768), 4096);
    std::vector<Chunk> b = a;
    ASSERT_TRUE(AssignRanks(cost, 8, 1, false, Balance::kCostModel, &a).ok());
    ASSERT_TRUE(AssignRanks(cost, 8, 1, false, Balance::kInOrder, &b).ok());
    const double ia = MaxOverMean(RankLoads(cost, 8, 1, false, a));
    const double ib = MaxOverMean(RankLoads(cost, 8, 1, false, b));
    // LPT: the slowest rank exceeds the mean by at most the heaviest group.
    lpt = std::max(lpt, ia);
    in_order = std::max(in_order, ib);
  }
  EXPECT_LT(lpt, 1.10);
  EXPECT_LT(lpt, in_order);
}

TEST(AssignRanks, QuadraticTerm_CountsEarlierKv) {
  // A chain's later chunks attend to earlier K/V too: with a pure quadratic
  // cost a 4-chunk chain weighs far more than 4 standalone chunks of its size.
  std::vector<Chunk> chunks = *BuildChunks(
      std::vector<Sequence>{{0, 40}, {1, 10}, {2, 10}, {3, 10}, {4, 10}}, 10);
  CostModel cost = testing::UniformCost(1, 0.0, 1.0);
  ASSERT_TRUE(AssignRanks(cost, 2, 4, false, Balance::kCostModel, &chunks).ok());
  std::vector<double> loads = RankLoads(cost, 2, 4, false, chunks);
  // Chain: pairs 55 + 155 + 255 + 355 = 820; standalone: 4 * 55 = 220.
  EXPECT_DOUBLE_EQ(std::max(loads[0], loads[1]), 820 * 3.0);
  EXPECT_DOUBLE_EQ(std::min(loads[0], loads[1]), 220 * 3.0);
  EXPECT_DOUBLE_EQ(loads[0] + loads[1], 1040 * 3.0);
}

TEST(AssignRanks, BadArguments_Rejected) {
  std::vector<Chunk> chunks = *BuildChunks(std::vector<Sequence>{{0, 5}}, 10);
  CostModel cost = testing::UniformCost(1, 1, 0);
  EXPECT_EQ(AssignRanks(cost, 0, 1, false, Balance::kCostModel, &chunks).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(AssignRanks(cost, 1, 0, false, Balance::kCostModel, &chunks).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chunkflow::planner
