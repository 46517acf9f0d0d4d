// Turns a planner Plan into the wire message chunkflow.v1.StepPlan (and the
// per-worker slice of it). Kept apart from the planner so the planner itself
// needs no protobuf.
//
// The plan knows nothing of jobs and steps: the caller (the coordinator) sets
// job_id, step, samples, loss_tokens, params.balance and checkpoint_after.
//
//   chunkflow::v1::StepPlan msg = ToStepPlanProto(plan, &sim);
//   msg.set_step(step);

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_PLAN_PROTO_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_PLAN_PROTO_H_

#include "absl/status/statusor.h"
#include "coordinator/planner/plan.h"
#include "coordinator/planner/simulator.h"
#include "proto/chunkflow.pb.h"

namespace chunkflow::planner {

// `sim` may be null.
chunkflow::v1::StepPlan ToStepPlanProto(const Plan& plan, const SimResult* sim);

// The message one (dp, stage) worker receives: its op list and its dp rank's
// chunks. Errors: INVALID_ARGUMENT for (dp, stage) outside the plan.
absl::StatusOr<chunkflow::v1::StepPlanForWorker> ToWorkerPlanProto(const Plan& plan, int32_t dp,
                                                                   int32_t stage);

// The inverse of ToStepPlanProto (the simulator's numbers are not read back):
// what a restarted coordinator rebuilds from its step log. Errors:
// INVALID_ARGUMENT naming the first inconsistency (chunk ids not 0..n-1, an op
// naming a missing chunk, a chain link out of range, dp x pp op lists missing).
absl::StatusOr<Plan> FromStepPlanProto(const chunkflow::v1::StepPlan& msg);

// The plan a worker runs, rebuilt from its slice: the chunks of its dp rank at
// their ids (ids of other ranks' chunks hold empty placeholders with dp -1)
// and its own op list at (ops.dp, ops.stage) of a dp x pp plan (the other op
// lists are empty). Errors: INVALID_ARGUMENT as above, or (ops.dp, ops.stage)
// outside dp x pp.
absl::StatusOr<Plan> FromWorkerPlanProto(const chunkflow::v1::StepPlanForWorker& msg, int32_t dp,
                                         int32_t pp);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_PLAN_PROTO_H_
