// The planner: a pure function from a global batch to a step plan.
//
// No clock, no RPC, no globals: the same request gives the same plan, byte for
// byte. ChunkFlow and the baselines share one path:
//
//   construction (chunking.h) -> dp ranks (balance.h) -> op lists (schedule.h)
//
//   strategy        construction                   ranks      recompute
//   kChunkFlow      chains + best-fit packing      cost model state-aware, K
//   kPacking        best-fit packing to max_length cost model none
//   kMegatronPad    one sequence each, padded      in order   none or full
//   kMegatronPack   next-fit packing to max_length in order   none or full
//
//   PlanRequest req;
//   req.sequences = {{0, 40000}, {1, 512}, {2, 3000}};
//   req.chunk_size = 8192; req.k = 2; req.dp = 2; req.pp = 4;
//   req.cost = CostModelFromShape(shape, req.pp, DeviceModel{});
//   absl::StatusOr<Plan> plan = BuildPlan(req);

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_PLANNER_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_PLANNER_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/planner/balance.h"
#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/plan.h"
#include "coordinator/planner/schedule.h"

namespace chunkflow::planner {

struct PlanRequest {
  std::vector<Sequence> sequences;  // the global batch, in cursor order
  Strategy strategy = Strategy::kChunkFlow;
  int64_t chunk_size = 8192;  // kChunkFlow
  int32_t k = 1;              // kChunkFlow; a K >= the longest chain keeps all
  int32_t dp = 1;
  int32_t pp = 1;
  // Packing capacity of kPacking and kMegatronPack; 0 means the batch's longest
  // sequence.
  int64_t max_length = 0;
  bool full_recompute = false;  // Megatron baselines only
  Balance balance = Balance::kCostModel;  // kChunkFlow and kPacking
  ChainPlacement placement = ChainPlacement::kLast;
  CostModel cost;  // balancing weights; one stage entry per pipeline stage
};

// Errors: INVALID_ARGUMENT naming the field (chunk_size, k, dp, pp, cost
// stages, an empty batch, a sequence with no tokens, a sequence id given
// twice, max_length below the longest sequence).
absl::StatusOr<Plan> BuildPlan(const PlanRequest& request);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_PLANNER_H_
