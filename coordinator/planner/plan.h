// The plan of one training step: chunks, their data-parallel ranks, and the
// ordered op list every (dp rank, pipeline stage) runs.
//
// These are plain value types shared by the planner's parts (chunking.h,
// balance.h, schedule.h, simulator.h). They hold no RPC types; plan_proto.h
// turns a Plan into the wire message chunkflow.v1.StepPlan.
//
//   Plan plan = ...;                       // from BuildPlan (planner.h)
//   for (const StageOps& so : plan.stage_ops)
//     for (const Op& op : so.ops) Run(plan.chunks[op.chunk], op);

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_PLAN_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

namespace chunkflow::planner {

// One sequence of the global batch. `id` is its document index in the dataset.
struct Sequence {
  int64_t id = 0;
  int64_t length = 0;
};

// A contiguous run of one sequence's tokens: [offset, offset + length).
struct Piece {
  int64_t seq = 0;
  int64_t offset = 0;
  int64_t length = 0;

  // (query, key) pairs of causal attention for this piece, counting its
  // attention to the `offset` earlier tokens of the same sequence (their K/V
  // come from the state store): sum over i < length of (offset + i + 1).
  int64_t AttentionPairs() const { return length * offset + length * (length + 1) / 2; }
};

// The unit of work: at most ChunkSize tokens, trained as one micro-batch.
//
// A *standalone* chunk packs whole short sequences (each isolated by a
// block-diagonal causal mask). A *dependent* chunk holds one piece of a long
// sequence; the chunks of one sequence form a chain linked by prev/next.
struct Chunk {
  int32_t id = 0;
  int32_t dp = -1;
  std::vector<Piece> pieces;
  int32_t chain_index = 0;   // position in its sequence's chain
  int32_t chain_length = 1;  // chunks in the chain (1 for standalone)
  int32_t prev = -1;         // previous chunk of the chain, or -1
  int32_t next = -1;         // next chunk of the chain, or -1
  int64_t tokens = 0;        // real tokens (sum of piece lengths)
  // What the device computes: differs from the real work only for padded
  // baselines (every token of the padded length, full causal attention).
  int64_t compute_tokens = 0;
  int64_t compute_pairs = 0;

  bool dependent() const { return chain_length > 1; }
};

enum class OpType : uint8_t { kForward = 1, kBackward = 2 };

struct Op {
  OpType type = OpType::kForward;
  int32_t chunk = 0;
  // Forward: keep activations for the backward. A forward that drops them keeps
  // the stage input (and writes K/V to the state store for dependent chunks).
  bool keep_activations = true;
  // Forward: this forward recomputes a chunk whose activations were dropped.
  bool recompute = false;

  bool operator==(const Op& o) const {
    return type == o.type && chunk == o.chunk && keep_activations == o.keep_activations &&
           recompute == o.recompute;
  }
};

struct StageOps {
  int32_t dp = 0;
  int32_t stage = 0;
  std::vector<Op> ops;
};

enum class Strategy : uint8_t {
  kChunkFlow = 0,     // chunks + state-aware scheduling with K
  kPacking = 1,       // best-fit packing to max_length, cost-balanced, no recompute
  kMegatronPad = 2,   // one sequence per micro-batch, padded to the batch's longest
  kMegatronPack = 3,  // sequences packed in order (next-fit) to max_length
};

const char* StrategyName(Strategy s);

struct Plan {
  Strategy strategy = Strategy::kChunkFlow;
  int64_t chunk_size = 0;
  int32_t k = 0;
  int32_t dp = 1;
  int32_t pp = 1;
  bool full_recompute = false;
  std::vector<Chunk> chunks;        // indexed by chunk id
  std::vector<StageOps> stage_ops;  // index dp * pp + stage

  const StageOps& ops(int32_t dp_rank, int32_t stage) const {
    return stage_ops[static_cast<size_t>(dp_rank) * pp + stage];
  }
};

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_PLAN_H_
