#include "coordinator/planner/plan_proto.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace chunkflow::planner {
namespace {

void FillChunk(const Chunk& c, chunkflow::v1::Chunk* out) {
  out->set_id(c.id);
  out->set_dp(c.dp);
  out->set_chain_index(c.chain_index);
  out->set_chain_length(c.chain_length);
  out->set_prev_chunk(c.prev);
  if (c.compute_tokens != c.tokens) out->set_compute_tokens(c.compute_tokens);
  for (const Piece& p : c.pieces) {
    chunkflow::v1::Piece* piece = out->add_pieces();
    piece->set_seq(p.seq);
    piece->set_offset(p.offset);
    piece->set_length(p.length);
  }
}

void FillOps(const StageOps& so, chunkflow::v1::StageOps* out) {
  out->set_dp(so.dp);
  out->set_stage(so.stage);
  for (const Op& op : so.ops) {
    chunkflow::v1::Op* o = out->add_ops();
    o->set_type(op.type == OpType::kForward ? chunkflow::v1::OP_TYPE_FORWARD
                                            : chunkflow::v1::OP_TYPE_BACKWARD);
    o->set_chunk(op.chunk);
    o->set_keep_activations(op.type == OpType::kForward && op.keep_activations);
    o->set_recompute(op.recompute);
  }
}

}  // namespace

chunkflow::v1::StepPlan ToStepPlanProto(const Plan& plan, const SimResult* sim) {
  chunkflow::v1::StepPlan msg;
  msg.set_dp(plan.dp);
  msg.set_pp(plan.pp);
  msg.mutable_params()->set_chunk_size(plan.chunk_size);
  msg.mutable_params()->set_k(plan.k);
  for (const Chunk& c : plan.chunks) FillChunk(c, msg.add_chunks());
  for (const StageOps& so : plan.stage_ops) FillOps(so, msg.add_stage_ops());
  if (sim != nullptr) {
    chunkflow::v1::SimulatedStep* s = msg.mutable_sim();
    s->set_makespan_s(sim->makespan_s);
    s->set_bubble_ratio(sim->bubble_ratio);
    s->set_dp_imbalance(sim->dp_imbalance);
    for (int64_t b : sim->peak_memory_bytes) s->add_peak_memory_bytes(b);
    for (double b : sim->stage_busy_s) s->add_busy_s(b);
  }
  return msg;
}

absl::StatusOr<chunkflow::v1::StepPlanForWorker> ToWorkerPlanProto(const Plan& plan, int32_t dp,
                                                                   int32_t stage) {
  if (dp < 0 || dp >= plan.dp || stage < 0 || stage >= plan.pp ||
      plan.stage_ops.size() != static_cast<size_t>(plan.dp) * plan.pp) {
    return absl::InvalidArgumentError(absl::StrCat("no op list for dp ", dp, " stage ", stage,
                                                   " in a plan of dp ", plan.dp, " x pp ",
                                                   plan.pp));
  }
  chunkflow::v1::StepPlanForWorker msg;
  msg.mutable_params()->set_chunk_size(plan.chunk_size);
  msg.mutable_params()->set_k(plan.k);
  for (const Chunk& c : plan.chunks) {
    if (c.dp == dp) FillChunk(c, msg.add_chunks());
  }
  FillOps(plan.ops(dp, stage), msg.mutable_ops());
  return msg;
}

}  // namespace chunkflow::planner
