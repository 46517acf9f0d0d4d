// Randomised property tests of the whole planner over many seeds and shapes.

#include "coordinator/planner/planner.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "coordinator/planner/plan_json.h"
#include "coordinator/planner/plan_proto.h"
#include "coordinator/planner/simulator.h"
#include "coordinator/planner/test_util.h"
#include "gtest/gtest.h"

namespace chunkflow::planner {
namespace {

using testing::RandomBatch;
using testing::UniformCost;
using testing::UniformMemory;

struct Shape {
  int64_t chunk_size;
  int32_t k, dp, pp;
};

// Every token of every sequence lies in exactly one piece.
void ExpectExactCover(const std::vector<Sequence>& batch, const Plan& plan) {
  std::map<int64_t, std::vector<std::pair<int64_t, int64_t>>> by_seq;
  for (const Chunk& c : plan.chunks) {
    for (const Piece& p : c.pieces) by_seq[p.seq].push_back({p.offset, p.length});
  }
  ASSERT_EQ(by_seq.size(), batch.size());
  for (const Sequence& s : batch) {
    auto& pieces = by_seq[s.id];
    std::sort(pieces.begin(), pieces.end());
    int64_t next = 0;
    for (auto [offset, length] : pieces) {
      ASSERT_EQ(offset, next) << "sequence " << s.id << ": gap or overlap";
      ASSERT_GT(length, 0);
      next += length;
    }
    ASSERT_EQ(next, s.length) << "sequence " << s.id;
  }
}

// Checks every per-stage ordering rule directly on the op lists.
void ExpectOrderRules(const Plan& plan) {
  for (const StageOps& so : plan.stage_ops) {
    std::vector<int> fwd(plan.chunks.size(), -1), bwd(plan.chunks.size(), -1);
    std::vector<int> live_per_head(plan.chunks.size(), 0);
    std::vector<int32_t> head(plan.chunks.size());
    for (const Chunk& c : plan.chunks) head[c.id] = c.prev >= 0 ? head[c.prev] : c.id;
    for (int i = 0; i < static_cast<int>(so.ops.size()); ++i) {
      const Op& op = so.ops[i];
      const Chunk& c = plan.chunks[op.chunk];
      ASSERT_EQ(c.dp, so.dp);
      if (op.type == OpType::kForward && !op.recompute) {
        ASSERT_EQ(fwd[op.chunk], -1) << "forwarded twice";
        fwd[op.chunk] = i;
        if (c.prev >= 0) ASSERT_GE(fwd[c.prev], 0) << "dependent chunk forwarded out of order";
      }
      if (op.type == OpType::kBackward) {
        ASSERT_GE(fwd[op.chunk], 0) << "backward before forward, chunk " << op.chunk;
        ASSERT_EQ(bwd[op.chunk], -1);
        bwd[op.chunk] = i;
        if (c.next >= 0) ASSERT_GE(bwd[c.next], 0) << "dependent chunk backward not reversed";
        --live_per_head[head[op.chunk]];
      } else if (op.keep_activations) {
        ASSERT_LE(++live_per_head[head[op.chunk]], plan.k) << "more than K chunks hold activations";
      }
    }
    for (const Chunk& c : plan.chunks) {
      if (c.dp != so.dp) continue;
      ASSERT_GE(fwd[c.id], 0) << "chunk " << c.id << " never forwarded on stage " << so.stage;
      ASSERT_GE(bwd[c.id], 0) << "chunk " << c.id << " never backwarded";
    }
  }
}

TEST(BuildPlan, RandomBatches_KeepEveryInvariant) {
  const std::vector<Shape> shapes = {{64, 1, 1, 1},   {64, 2, 2, 2},   {100, 1, 3, 4},
                                     {257, 3, 4, 3},  {1024, 1, 2, 8}, {33, 5, 1, 5},
                                     {4096, 2, 8, 2}, {7, 1, 2, 2}};
  int checked = 0;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    for (const Shape& sh : shapes) {
      PlanRequest req;
      req.sequences = RandomBatch(seed * 7919 + sh.chunk_size, 1 + seed % 37, sh.chunk_size * 9);
      req.chunk_size = sh.chunk_size;
      req.k = sh.k;
      req.dp = sh.dp;
      req.pp = sh.pp;
      req.placement = seed % 2 ? ChainPlacement::kLast : ChainPlacement::kFirst;
      req.cost = UniformCost(sh.pp, 1e-6, 1e-9);
      absl::StatusOr<Plan> plan = BuildPlan(req);
      ASSERT_TRUE(plan.ok()) << plan.status();
      ExpectExactCover(req.sequences, *plan);
      for (const Chunk& c : plan->chunks) {
        ASSERT_LE(c.tokens, sh.chunk_size);
        if (c.dependent()) {
          ASSERT_EQ(c.pieces.size(), 1u);
          ASSERT_EQ(plan->chunks[c.id - c.chain_index].dp, c.dp) << "chain split over dp ranks";
        }
      }
      ExpectOrderRules(*plan);
      absl::StatusOr<SimResult> sim = Simulate(*plan, req.cost, UniformMemory(sh.pp));
      ASSERT_TRUE(sim.ok()) << sim.status() << " seed " << seed;
      ASSERT_LE(sim->max_live_chunks_per_sequence, sh.k);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 40 * 8);
}

TEST(BuildPlan, Baselines_CoverTokensAndSimulate) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    for (Strategy strategy :
         {Strategy::kPacking, Strategy::kMegatronPad, Strategy::kMegatronPack}) {
      for (bool recompute : {false, true}) {
        PlanRequest req;
        req.sequences = RandomBatch(seed, 25, 5000);
        req.strategy = strategy;
        req.full_recompute = recompute;
        req.dp = 2;
        req.pp = 3;
        req.cost = UniformCost(3, 1e-6, 1e-9);
        absl::StatusOr<Plan> plan = BuildPlan(req);
        ASSERT_TRUE(plan.ok()) << plan.status();
        ExpectExactCover(req.sequences, *plan);
        ExpectOrderRules(*plan);
        ASSERT_TRUE(Simulate(*plan, req.cost, UniformMemory(3)).ok());
      }
    }
  }
}

TEST(BuildPlan, SameInput_SameBytes) {
  PlanRequest req;
  req.sequences = RandomBatch(99, 500, 40000);
  req.chunk_size = 2048;
  req.k = 2;
  req.dp = 4;
  req.pp = 4;
  req.cost = UniformCost(4, 1e-6, 1e-9);
  absl::StatusOr<Plan> a = BuildPlan(req);
  absl::StatusOr<Plan> b = BuildPlan(req);
  ASSERT_TRUE(a.ok() && b.ok());
  const MemoryModel mem = UniformMemory(4);
  SimResult sa = *Simulate(*a, req.cost, mem);
  SimResult sb = *Simulate(*b, req.cost, mem);
  EXPECT_EQ(StepToJson(3, *a, &sa).dump(), StepToJson(3, *b, &sb).dump());
  std::string pa, pb;
  ASSERT_TRUE(ToStepPlanProto(*a, &sa).SerializeToString(&pa));
  ASSERT_TRUE(ToStepPlanProto(*b, &sb).SerializeToString(&pb));
  EXPECT_EQ(pa, pb);
  EXPECT_GT(pa.size(), 1000u);
}

TEST(BuildPlan, BadRequest_NamesTheField) {
  PlanRequest req;
  req.sequences = {{0, 10}};
  req.cost = UniformCost(1, 1, 0);
  auto expect = [&](PlanRequest r, const std::string& needle) {
    absl::StatusOr<Plan> p = BuildPlan(r);
    ASSERT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(std::string(p.status().message()).find(needle), std::string::npos)
        << p.status();
  };
  PlanRequest r = req;
  r.chunk_size = 0;
  expect(r, "chunk_size");
  r = req;
  r.k = 0;
  expect(r, "K must be");
  r = req;
  r.dp = 0;
  expect(r, "dp must be");
  r = req;
  r.pp = 2;
  expect(r, "cost model has 1 stages");
  r = req;
  r.sequences.clear();
  expect(r, "empty");
  r = req;
  r.sequences = {{5, 0}};
  expect(r, "sequence 5");
  r = req;
  r.strategy = Strategy::kPacking;
  r.sequences = {{0, 10}, {1, 30}};
  r.max_length = 20;
  expect(r, "max_length 20");
  r = req;
  r.sequences = {{3, 10}, {4, 5}, {3, 7}};
  expect(r, "sequence id 3 appears twice");
}

TEST(BuildPlan, ToWorkerPlan_HasOnlyItsRank) {
  PlanRequest req;
  req.sequences = RandomBatch(5, 60, 3000);
  req.chunk_size = 512;
  req.dp = 2;
  req.pp = 2;
  req.cost = UniformCost(2, 1e-6, 1e-9);
  Plan plan = *BuildPlan(req);
  EXPECT_EQ(ToWorkerPlanProto(plan, 2, 0).status().code(), absl::StatusCode::kInvalidArgument);
  chunkflow::v1::StepPlanForWorker w = *ToWorkerPlanProto(plan, 1, 1);
  EXPECT_EQ(w.ops().dp(), 1);
  EXPECT_EQ(w.ops().stage(), 1);
  EXPECT_EQ(w.ops().ops_size(), static_cast<int>(plan.ops(1, 1).ops.size()));
  for (const auto& c : w.chunks()) EXPECT_EQ(c.dp(), 1);
}

void ExpectSameChunk(const Chunk& a, const Chunk& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.dp, b.dp);
  EXPECT_EQ(a.chain_index, b.chain_index);
  EXPECT_EQ(a.chain_length, b.chain_length);
  EXPECT_EQ(a.prev, b.prev);
  EXPECT_EQ(a.next, b.next) << "chunk " << a.id;
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.compute_tokens, b.compute_tokens);
  EXPECT_EQ(a.compute_pairs, b.compute_pairs);
  ASSERT_EQ(a.pieces.size(), b.pieces.size());
  for (size_t i = 0; i < a.pieces.size(); ++i) {
    EXPECT_EQ(a.pieces[i].seq, b.pieces[i].seq);
    EXPECT_EQ(a.pieces[i].offset, b.pieces[i].offset);
    EXPECT_EQ(a.pieces[i].length, b.pieces[i].length);
  }
}

TEST(BuildPlan, ProtoRoundTrip_RebuildsThePlanAndEveryWorkerSlice) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    PlanRequest req;
    req.sequences = RandomBatch(seed, 40, 4000);
    req.chunk_size = 300;
    req.k = 2;
    req.dp = 2;
    req.pp = 3;
    req.cost = UniformCost(3, 1e-6, 1e-9);
    const Plan plan = *BuildPlan(req);
    absl::StatusOr<Plan> back = FromStepPlanProto(ToStepPlanProto(plan, nullptr));
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ(back->chunks.size(), plan.chunks.size());
    for (size_t i = 0; i < plan.chunks.size(); ++i) ExpectSameChunk(back->chunks[i], plan.chunks[i]);
    ASSERT_EQ(back->stage_ops.size(), plan.stage_ops.size());
    for (size_t i = 0; i < plan.stage_ops.size(); ++i) {
      EXPECT_EQ(back->stage_ops[i].ops, plan.stage_ops[i].ops);
    }
    ExpectOrderRules(*back);
    for (int32_t d = 0; d < 2; ++d) {
      for (int32_t s = 0; s < 3; ++s) {
        absl::StatusOr<Plan> w = FromWorkerPlanProto(*ToWorkerPlanProto(plan, d, s), 2, 3);
        ASSERT_TRUE(w.ok()) << w.status();
        EXPECT_EQ(w->ops(d, s).ops, plan.ops(d, s).ops);
        for (const Chunk& c : plan.chunks) {
          if (c.dp == d) ExpectSameChunk(w->chunks[c.id], c);
        }
      }
    }
  }
}

TEST(BuildPlan, ProtoWithBadReferences_IsRejected) {
  PlanRequest req;
  req.sequences = RandomBatch(3, 10, 2000);
  req.chunk_size = 256;
  req.dp = 1;
  req.pp = 2;
  req.cost = UniformCost(2, 1e-6, 1e-9);
  const Plan plan = *BuildPlan(req);
  chunkflow::v1::StepPlan msg = ToStepPlanProto(plan, nullptr);
  chunkflow::v1::StepPlan bad = msg;
  bad.mutable_stage_ops(0)->mutable_ops(0)->set_chunk(999);
  EXPECT_NE(FromStepPlanProto(bad).status().message().find("chunk 999"), std::string::npos);
  bad = msg;
  bad.mutable_chunks(0)->set_prev_chunk(77);
  EXPECT_EQ(FromStepPlanProto(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = msg;
  bad.mutable_stage_ops()->RemoveLast();
  EXPECT_NE(FromStepPlanProto(bad).status().message().find("op lists"), std::string::npos);
  chunkflow::v1::StepPlanForWorker w = *ToWorkerPlanProto(plan, 0, 1);
  EXPECT_EQ(FromWorkerPlanProto(w, 1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  w.mutable_chunks()->RemoveLast();
  EXPECT_EQ(FromWorkerPlanProto(w, 1, 2).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chunkflow::planner
