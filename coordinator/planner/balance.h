// Data-parallel balancing: sets Chunk::dp for every chunk.
//
// All chunks of one sequence (a chain) go to one rank, since their state store
// lives there. The unit of assignment is therefore a *group*: a whole chain, or
// one standalone chunk. Its weight is its forward + backward time over all
// stages under the cost model (linear and quadratic terms, attention to earlier
// chunks' K/V included), plus the forwards it recomputes.
//
// kCostModel: longest-processing-time first (LPT): heaviest group first, each to
// the currently lightest rank (ties: lowest rank). The slowest rank is within
// 4/3 of the optimum (Graham), and in practice within a few percent when
// groups are many and small, which chunking guarantees.
// kInOrder: groups in order, split into dp contiguous runs of equal count, as a
// Megatron-style data loader splits a global batch.
//
//   AssignRanks(cost, /*dp=*/4, /*k=*/2, /*full_recompute=*/false,
//               Balance::kCostModel, &chunks);

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_BALANCE_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_BALANCE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/plan.h"

namespace chunkflow::planner {

enum class Balance : uint8_t { kCostModel = 0, kInOrder = 1 };

// Errors: INVALID_ARGUMENT for dp < 1 or k < 1.
absl::Status AssignRanks(const CostModel& cost, int32_t dp, int32_t k, bool full_recompute,
                         Balance balance, std::vector<Chunk>* chunks);

// Seconds of compute each rank got (forwards, recomputes and backwards, all
// stages), indexed by rank.
std::vector<double> RankLoads(const CostModel& cost, int32_t dp, int32_t k,
                              bool full_recompute, const std::vector<Chunk>& chunks);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_BALANCE_H_
