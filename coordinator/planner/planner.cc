#include "coordinator/planner/planner.h"

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "coordinator/planner/chunking.h"

namespace chunkflow::planner {

const char* StrategyName(Strategy s) {
  switch (s) {
    case Strategy::kChunkFlow:
      return "chunkflow";
    case Strategy::kPacking:
      return "packing";
    case Strategy::kMegatronPad:
      return "megatron-pad";
    case Strategy::kMegatronPack:
      return "megatron-pack";
  }
  return "unknown";
}

namespace {

absl::Status Validate(const PlanRequest& r) {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (r.sequences.empty()) return bad("the global batch is empty; give at least one sequence");
  if (r.dp < 1) return bad("dp must be >= 1, got ", r.dp);
  if (r.pp < 1) return bad("pp must be >= 1, got ", r.pp);
  if (r.strategy == Strategy::kChunkFlow && r.chunk_size < 1) {
    return bad("chunk_size must be >= 1, got ", r.chunk_size);
  }
  if (r.k < 1) return bad("K must be >= 1, got ", r.k);
  if (r.max_length < 0) return bad("max_length must be >= 0 (0: longest), got ", r.max_length);
  // Pieces, and a worker's state store, are keyed by the sequence id: two
  // sequences with one id would share K/V (and might be packed together).
  absl::flat_hash_set<int64_t> ids;
  for (const Sequence& q : r.sequences) {
    if (!ids.insert(q.id).second) return bad("sequence id ", q.id, " appears twice in the batch");
  }
  return ValidateCostModel(r.cost, r.pp);
}

absl::StatusOr<std::vector<Chunk>> Construct(const PlanRequest& r, int64_t longest,
                                             int64_t capacity) {
  switch (r.strategy) {
    case Strategy::kChunkFlow:
      return BuildChunks(r.sequences, r.chunk_size);
    case Strategy::kPacking:
      if (capacity < longest) {
        return absl::InvalidArgumentError(
            absl::StrCat("max_length ", capacity, " is below the batch's longest sequence (",
                         longest, " tokens); plain packing never splits a sequence"));
      }
      return BuildChunks(r.sequences, capacity);
    case Strategy::kMegatronPad:
      return OneSequencePerChunk(r.sequences, longest);
    case Strategy::kMegatronPack:
      return PackInOrder(r.sequences, capacity);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown strategy ", static_cast<int>(r.strategy)));
}

}  // namespace

absl::StatusOr<Plan> BuildPlan(const PlanRequest& request) {
  if (absl::Status s = Validate(request); !s.ok()) return s;
  int64_t longest = 0;
  for (const Sequence& s : request.sequences) longest = std::max(longest, s.length);

  const int64_t capacity = request.max_length > 0 ? request.max_length : longest;
  absl::StatusOr<std::vector<Chunk>> chunks = Construct(request, longest, capacity);
  if (!chunks.ok()) return chunks.status();

  Plan plan;
  plan.strategy = request.strategy;
  plan.dp = request.dp;
  plan.pp = request.pp;
  const bool megatron = request.strategy == Strategy::kMegatronPad ||
                        request.strategy == Strategy::kMegatronPack;
  plan.full_recompute = megatron && request.full_recompute;
  switch (request.strategy) {
    case Strategy::kChunkFlow:
      plan.chunk_size = request.chunk_size;
      plan.k = request.k;
      break;
    case Strategy::kPacking:
    case Strategy::kMegatronPack:
      plan.chunk_size = capacity;
      plan.k = 1;
      break;
    case Strategy::kMegatronPad:
      plan.chunk_size = longest;
      plan.k = 1;
      break;
  }
  plan.chunks = *std::move(chunks);
  const Balance balance = megatron ? Balance::kInOrder : request.balance;
  if (absl::Status s = AssignRanks(request.cost, plan.dp, plan.k, plan.full_recompute, balance,
                                   &plan.chunks);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = BuildStageOps(request.placement, &plan); !s.ok()) return s;
  return plan;
}

}  // namespace chunkflow::planner
