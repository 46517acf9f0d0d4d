#include "coordinator/planner/schedule.h"

#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "coordinator/planner/chunking.h"
#include "coordinator/planner/planner.h"
#include "coordinator/planner/test_util.h"
#include "gtest/gtest.h"

namespace chunkflow::planner {
namespace {

// "F3" forward keeping, "f3" forward dropping, "R3" recompute, "B3" backward.
std::string Render(const std::vector<Op>& ops) {
  std::vector<std::string> out;
  for (const Op& op : ops) {
    std::string s = op.type == OpType::kBackward ? "B"
                    : op.recompute               ? "R"
                    : op.keep_activations        ? "F"
                                                 : "f";
    out.push_back(s + std::to_string(op.chunk));
  }
  return absl::StrJoin(out, " ");
}

// The worked example in schedule.h: a standalone chunk then a chain of 4, K=2.
TEST(BuildStageOps, WorkedExample_MatchesHeader) {
  PlanRequest req;
  req.sequences = {{0, 40}, {1, 5}};  // chain 0..3 (chunk size 10), standalone 4
  req.chunk_size = 10;
  req.k = 2;
  req.pp = 2;
  req.cost = testing::UniformCost(2, 1, 0);
  absl::StatusOr<Plan> plan = BuildPlan(req);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->chunks.size(), 5u);
  EXPECT_EQ(Render(plan->ops(0, 0).ops),
            "F4 f0 B4 f1 F2 F3 B3 B2 R0 R1 B1 B0");
  EXPECT_EQ(Render(plan->ops(0, 1).ops),
            "F4 B4 f0 f1 F2 F3 B3 B2 R0 R1 B1 B0");
}

TEST(BuildStageOps, ChainsFirst_PutsChainAhead) {
  PlanRequest req;
  req.sequences = {{0, 40}, {1, 5}};
  req.chunk_size = 10;
  req.k = 2;
  req.pp = 1;
  req.placement = ChainPlacement::kFirst;
  req.cost = testing::UniformCost(1, 1, 0);
  Plan plan = *BuildPlan(req);
  EXPECT_EQ(Render(plan.ops(0, 0).ops), "f0 f1 F2 F3 B3 B2 R0 R1 B1 B0 F4 B4");
}

TEST(BuildStageOps, KOne_RecomputesEachChunkAlone) {
  PlanRequest req;
  req.sequences = {{0, 30}};
  req.chunk_size = 10;
  req.k = 1;
  req.cost = testing::UniformCost(1, 1, 0);
  Plan plan = *BuildPlan(req);
  EXPECT_EQ(Render(plan.ops(0, 0).ops), "f0 f1 F2 B2 R1 B1 R0 B0");
}

TEST(BuildStageOps, KNotDividing_LastGroupShorter) {
  PlanRequest req;
  req.sequences = {{0, 60}};
  req.chunk_size = 10;
  req.k = 4;
  req.cost = testing::UniformCost(1, 1, 0);
  Plan plan = *BuildPlan(req);
  // Kept: 2..5. Then a group of 2 (0, 1).
  EXPECT_EQ(Render(plan.ops(0, 0).ops), "f0 f1 F2 F3 F4 F5 B5 B4 B3 B2 R0 R1 B1 B0");
}

TEST(BuildStageOps, FullRecomputeBaseline_RecomputesEveryChunk) {
  PlanRequest req;
  req.sequences = {{0, 3}, {1, 4}};
  req.strategy = Strategy::kMegatronPad;
  req.full_recompute = true;
  req.cost = testing::UniformCost(1, 1, 0);
  Plan plan = *BuildPlan(req);
  EXPECT_EQ(Render(plan.ops(0, 0).ops), "f0 R0 B0 f1 R1 B1");
}

TEST(BuildStageOps, FullRecomputeChain_KeepsNothing) {
  Plan plan;
  plan.k = 1;
  plan.dp = 1;
  plan.pp = 1;
  plan.full_recompute = true;
  plan.chunks = *BuildChunks(std::vector<Sequence>{{0, 30}}, 10);
  for (Chunk& c : plan.chunks) c.dp = 0;
  ASSERT_TRUE(BuildStageOps(ChainPlacement::kLast, &plan).ok());
  EXPECT_EQ(Render(plan.ops(0, 0).ops), "f0 f1 f2 R2 B2 R1 B1 R0 B0");
}

TEST(BuildStageOps, BrokenChain_Rejected) {
  Plan plan;
  plan.k = 1;
  plan.dp = 2;
  plan.pp = 1;
  plan.chunks = *BuildChunks(std::vector<Sequence>{{0, 30}}, 10);
  plan.chunks[0].dp = plan.chunks[1].dp = 0;
  plan.chunks[2].dp = 1;  // a chain split over two ranks
  absl::Status s = BuildStageOps(ChainPlacement::kLast, &plan);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("chunk 2 (chain index 2 of 3"), std::string::npos) << s;
  plan.dp = 0;
  EXPECT_NE(std::string(BuildStageOps(ChainPlacement::kLast, &plan).message()).find("dp must be"),
            std::string::npos);
}

TEST(BuildStageOps, EqualMicroBatches_AreMegatron1F1B) {
  PlanRequest req;
  for (int i = 0; i < 6; ++i) req.sequences.push_back({i, 8});
  req.strategy = Strategy::kMegatronPad;
  req.pp = 4;
  req.cost = testing::UniformCost(4, 1, 0);
  Plan plan = *BuildPlan(req);
  // Stage 0: 3 warm-up forwards, then 1F1B, then cool-down.
  EXPECT_EQ(Render(plan.ops(0, 0).ops), "F0 F1 F2 F3 B0 F4 B1 F5 B2 B3 B4 B5");
  EXPECT_EQ(Render(plan.ops(0, 3).ops), "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5");
}

TEST(BuildStageOps, ChunkOnUnknownRank_Rejected) {
  Plan plan;
  plan.k = 1;
  plan.dp = 1;
  plan.pp = 1;
  plan.chunks = *BuildChunks(std::vector<Sequence>{{0, 5}}, 10);
  plan.chunks[0].dp = 3;
  absl::Status s = BuildStageOps(ChainPlacement::kLast, &plan);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("chunk 0 has dp rank 3"), std::string::npos) << s;
}

}  // namespace
}  // namespace chunkflow::planner
