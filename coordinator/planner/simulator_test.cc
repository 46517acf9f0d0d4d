#include "coordinator/planner/simulator.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "coordinator/planner/planner.h"
#include "coordinator/planner/test_util.h"
#include "gtest/gtest.h"

namespace chunkflow::planner {
namespace {

using testing::UniformCost;
using testing::UniformMemory;

void ExpectInvalid(const absl::StatusOr<SimResult>& r, const std::string& needle) {
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(std::string(r.status().message()).find(needle), std::string::npos) << r.status();
}

// m equal standalone chunks (one sequence each) on one dp rank.
Plan EqualMicroBatches(int m, int p, int64_t tokens) {
  PlanRequest req;
  for (int i = 0; i < m; ++i) req.sequences.push_back({i, tokens});
  req.strategy = Strategy::kMegatronPad;
  req.pp = p;
  req.cost = UniformCost(p, 1.0, 0.0);
  return *BuildPlan(req);
}

TEST(Simulate, OneFOneBEqualMicroBatches_BubbleIsExact) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 1; m <= 24; ++m) {
      for (double bwd : {1.0, 2.0, 3.0}) {
        const int64_t f = 1 + (m + p) % 4;  // forward seconds per stage
        Plan plan = EqualMicroBatches(m, p, f);
        CostModel cost = UniformCost(p, 1.0, 0.0, bwd);  // seconds = tokens
        absl::StatusOr<SimResult> r = Simulate(plan, cost, UniformMemory(p));
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(r->makespan_s, (m + p - 1) * (f + bwd * f)) << "p=" << p << " m=" << m;
        EXPECT_DOUBLE_EQ(r->bubble_ratio, static_cast<double>(p - 1) / (m + p - 1))
            << "p=" << p << " m=" << m;
      }
    }
  }
}

// One 30-token sequence cut into a chain of three chunks, one stage.
Plan ChainOf3(int32_t k) {
  PlanRequest req;
  req.sequences = {{0, 30}};
  req.chunk_size = 10;
  req.k = k;
  req.cost = UniformCost(1, 1, 0);
  return *BuildPlan(req);
}

TEST(Simulate, BackwardBeforeForward_NamesTheOp) {
  Plan plan = EqualMicroBatches(2, 1, 4);
  std::swap(plan.stage_ops[0].ops[0], plan.stage_ops[0].ops[1]);  // B0 F0 ...
  ExpectInvalid(Simulate(plan, UniformCost(1, 1, 0), UniformMemory(1)),
                "dp 0 stage 0 op #0 (backward of chunk 0)");
}

TEST(Simulate, ChainBackwardNotReversed_NamesTheOp) {
  Plan plan = ChainOf3(/*k=*/3);
  // F0 F1 F2 B2 B1 B0 -> F0 F1 F2 B1 B2 B0
  std::vector<Op>& ops = plan.stage_ops[0].ops;
  ASSERT_EQ(ops[3].chunk, 2);
  std::swap(ops[3], ops[4]);
  ExpectInvalid(Simulate(plan, UniformCost(1, 1, 0), UniformMemory(1)),
                "the backward of chunk 2, which follows it in its sequence");
}

TEST(Simulate, ChainForwardOutOfOrder_NamesTheOp) {
  Plan plan = ChainOf3(/*k=*/3);
  std::swap(plan.stage_ops[0].ops[0], plan.stage_ops[0].ops[1]);
  ExpectInvalid(Simulate(plan, UniformCost(1, 1, 0), UniformMemory(1)), "previous chunk 0");
}

TEST(Simulate, DroppedActivations_BackwardWithoutRecomputeRejected) {
  Plan plan = ChainOf3(/*k=*/1);
  std::vector<Op>& ops = plan.stage_ops[0].ops;
  // Remove every recompute: chunk 1's backward then has nothing to use.
  ops.erase(std::remove_if(ops.begin(), ops.end(), [](const Op& o) { return o.recompute; }),
            ops.end());
  ExpectInvalid(Simulate(plan, UniformCost(1, 1, 0), UniformMemory(1)), "no activations to use");
}

TEST(Simulate, CrossStageCycle_ReportsDeadlock) {
  Plan plan = EqualMicroBatches(2, 2, 1);
  // Stage 1 wants chunk 1 first; stage 0 backwards chunk 0 (needs stage 1's
  // backward of 0) before forwarding chunk 1.
  plan.stage_ops[0].ops = {{OpType::kForward, 0}, {OpType::kBackward, 0},
                           {OpType::kForward, 1}, {OpType::kBackward, 1}};
  plan.stage_ops[1].ops = {{OpType::kForward, 1}, {OpType::kBackward, 1},
                           {OpType::kForward, 0}, {OpType::kBackward, 0}};
  ExpectInvalid(Simulate(plan, UniformCost(2, 1, 0), UniformMemory(2)), "deadlock");
}

TEST(Simulate, MissingOp_Rejected) {
  Plan plan = EqualMicroBatches(2, 1, 1);
  plan.stage_ops[0].ops.pop_back();
  ExpectInvalid(Simulate(plan, UniformCost(1, 1, 0), UniformMemory(1)), "has no backward");
}

TEST(Simulate, ModelStagesMismatch_Rejected) {
  Plan plan = EqualMicroBatches(2, 2, 1);
  ExpectInvalid(Simulate(plan, UniformCost(3, 1, 0), UniformMemory(2)),
                "cost model has 3 stages, pp is 2");
  MemoryModel mem = UniformMemory(2);
  mem.state_bytes_per_token.clear();
  ExpectInvalid(Simulate(plan, UniformCost(2, 1, 0), mem),
                "memory model state_bytes_per_token has 0 entries, pp is 2");
}

TEST(Simulate, ChunkOnUnknownRank_Rejected) {
  Plan plan = EqualMicroBatches(2, 1, 1);
  plan.chunks[1].dp = 5;
  ExpectInvalid(Simulate(plan, UniformCost(1, 1, 0), UniformMemory(1)),
                "chunk 1 has dp rank 5, outside [0, 1)");
}

TEST(Simulate, NegativeOrNanCoefficient_Rejected) {
  Plan plan = EqualMicroBatches(1, 2, 1);
  CostModel cost = UniformCost(2, 1, 0);
  cost.stages[0].fixed_s = -5;
  ExpectInvalid(Simulate(plan, cost, UniformMemory(2)),
                "cost model stage 0 fixed_s must be finite and >= 0, got -5");
  cost = UniformCost(2, 1, 0);
  cost.stages[1].linear_s_per_token = std::nan("");
  ExpectInvalid(Simulate(plan, cost, UniformMemory(2)), "stage 1 linear_s_per_token");
}

// The state store by hand: one 30-token sequence, chunks of 10, K = 1, one
// stage; activations 100 B/token, stage input 1, state (K, V, dK, dV) 30.
//   f0  reserves the sequence's state, 30 x 30 = 900; runs with 1000 of
//       activations (1900); keeps its input: 910
//   f1  runs (1910), keeps its input: 920
//   F2  keeps activations: 1920 (peak)
//   B2  frees them: 920
//   R1  1920; B1 frees activations and input: 910
//   R0  1910; B0 frees activations and input (900), then, as the sequence's
//       first chunk, its state: 0
TEST(Simulate, StateStoreAccounting_ExactPeak) {
  PlanRequest req;
  req.sequences = {{0, 30}};
  req.chunk_size = 10;
  req.k = 1;
  req.cost = UniformCost(1, 1, 0);
  absl::StatusOr<SimResult> r = Simulate(*BuildPlan(req), req.cost, UniformMemory(1));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->peak_memory_bytes[0], 1920);
  MemoryModel mem = UniformMemory(1);
  mem.static_bytes = {5000};
  EXPECT_EQ(Simulate(*BuildPlan(req), req.cost, mem)->peak_memory_bytes[0], 6920);
}

// Packed sequences have state too (the engines keep every sequence's K/V
// and their gradients until its backward): two 5-token sequences in one
// 10-token chunk reserve 30 x 10 while it runs, then free it.
TEST(Simulate, PackedSequences_HoldStateUntilTheirBackward) {
  PlanRequest req;
  req.sequences = {{0, 5}, {1, 5}};
  req.chunk_size = 10;
  req.k = 1;
  req.cost = UniformCost(1, 1, 0);
  absl::StatusOr<SimResult> r = Simulate(*BuildPlan(req), req.cost, UniformMemory(1));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->peak_memory_bytes[0], 100 * 10 + 30 * 10);
}

// Peak activation memory follows K x chunk, not the sequence.
TEST(Simulate, LongSequence_PeakFollowsKNotLength) {
  MemoryModel mem = UniformMemory(1);
  mem.state_bytes_per_token = {0};
  mem.input_bytes_per_token = {0};
  auto peak = [&](int64_t len, int32_t k) {
    PlanRequest req;
    req.sequences = {{0, len}};
    req.chunk_size = 1000;
    req.k = k;
    req.cost = UniformCost(1, 1, 0);
    return Simulate(*BuildPlan(req), req.cost, mem)->peak_memory_bytes[0];
  };
  EXPECT_EQ(peak(16000, 1), 100 * 1000);
  EXPECT_EQ(peak(64000, 1), 100 * 1000);
  EXPECT_EQ(peak(64000, 4), 4 * 100 * 1000);
  EXPECT_EQ(peak(16000, 16), 16 * 100 * 1000);  // K = all: the whole sequence
}

}  // namespace
}  // namespace chunkflow::planner
