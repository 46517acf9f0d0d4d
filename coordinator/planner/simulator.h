// Discrete-event simulation of one step's op lists under a cost and a memory
// model, and the plan's validator.
//
// Each (dp, stage) runs its ops in list order, one at a time. An op starts when
// its stage is free and its inputs exist:
//   forward of chunk c on stage s   after c's first forward on stage s - 1
//   backward of c on stage s        after c's backward on stage s + 1
//   recompute forward               local (the stage kept its input)
// Point-to-point transfers and the dp all-reduce are not modelled (zero time).
//
// A plan is rejected, naming the (dp, stage, op index) and the chunk, when an
// op breaks a dependency that its own list decides (a dependent chunk forwarded
// before its predecessor, a backward before the backward of the chunk after it
// in its sequence, a backward with no activations to use, a chunk forwarded or
// backwarded twice or never, a chunk on another dp rank) or when no stage can
// move (deadlock: every waiting op is listed).
//
// Memory per (dp, stage): static bytes + kept activations + stage inputs of
// chunks whose activations were dropped + the state store (K, V, dK and dV of
// each sequence, reserved for its whole length at its first forward and freed
// after the backward of its first chunk, as the engines do). A forward that
// drops activations still holds them while it runs.
//
//   absl::StatusOr<SimResult> r = Simulate(plan, cost, memory);
//   if (r.ok()) printf("%.3f s, bubble %.1f%%\n", r->makespan_s, 100 * r->bubble_ratio);

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_SIMULATOR_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_SIMULATOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/plan.h"

namespace chunkflow::planner {

struct SimResult {
  double makespan_s = 0;  // slowest dp rank's pipeline
  // Idle share of all (dp, stage) slots over the makespan: pipeline bubbles
  // and dp imbalance together.
  double bubble_ratio = 0;
  std::vector<double> stage_busy_s;          // per stage, max over dp
  std::vector<int64_t> peak_memory_bytes;    // per stage, max over dp
  std::vector<double> dp_makespan_s;         // per dp rank
  std::vector<double> dp_busy_s;             // per dp rank, all its stages
  double dp_imbalance = 1;                   // max / mean of dp_busy_s
  int32_t max_live_chunks_per_sequence = 0;  // holding activations at once
  int64_t ops = 0;
};

// Errors: INVALID_ARGUMENT naming the op for a broken dependency or a deadlock,
// naming the field for a plan / model mismatch or a negative or non-finite
// model coefficient, or naming a chunk on a dp rank outside [0, dp).
absl::StatusOr<SimResult> Simulate(const Plan& plan, const CostModel& cost,
                                   const MemoryModel& memory);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_SIMULATOR_H_
