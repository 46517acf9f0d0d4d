#include "coordinator/planner/plan_proto.h"

#include <algorithm>

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

Chunk ReadChunk(const chunkflow::v1::Chunk& m) {
  Chunk c;
  c.id = m.id();
  c.dp = m.dp();
  c.chain_index = m.chain_index();
  c.chain_length = m.chain_length();
  c.prev = m.prev_chunk();
  for (const chunkflow::v1::Piece& p : m.pieces()) {
    c.pieces.push_back(Piece{p.seq(), p.offset(), p.length()});
    c.tokens += p.length();
    c.compute_pairs += c.pieces.back().AttentionPairs();
  }
  c.compute_tokens = m.compute_tokens() > 0 ? m.compute_tokens() : c.tokens;
  if (m.compute_tokens() > 0) {
    // Padded baselines: full causal attention over the padded length.
    c.compute_pairs = m.compute_tokens() * (m.compute_tokens() + 1) / 2;
  }
  return c;
}

absl::StatusOr<StageOps> ReadOps(const chunkflow::v1::StageOps& m, size_t num_chunks) {
  StageOps so;
  so.dp = m.dp();
  so.stage = m.stage();
  for (int i = 0; i < m.ops_size(); ++i) {
    const chunkflow::v1::Op& o = m.ops(i);
    if (o.type() != chunkflow::v1::OP_TYPE_FORWARD && o.type() != chunkflow::v1::OP_TYPE_BACKWARD) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, " of dp ", so.dp, " stage ",
                                                     so.stage, " has no type"));
    }
    if (o.chunk() < 0 || static_cast<size_t>(o.chunk()) >= num_chunks) {
      return absl::InvalidArgumentError(absl::StrCat("op ", i, " of dp ", so.dp, " stage ",
                                                     so.stage, " names chunk ", o.chunk(),
                                                     " of ", num_chunks));
    }
    Op op;
    op.type = o.type() == chunkflow::v1::OP_TYPE_FORWARD ? OpType::kForward : OpType::kBackward;
    op.chunk = o.chunk();
    op.keep_activations = op.type == OpType::kForward && o.keep_activations();
    op.recompute = o.recompute();
    so.ops.push_back(op);
  }
  return so;
}

// Sets `next` from `prev` and checks the links stay inside the chunk list.
absl::Status LinkChains(std::vector<Chunk>* chunks) {
  for (Chunk& c : *chunks) {
    if (c.prev < -1 || c.prev >= static_cast<int32_t>(chunks->size()) || c.prev == c.id) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk ", c.id, " names previous chunk ", c.prev));
    }
  }
  for (Chunk& c : *chunks) {
    if (c.prev >= 0) (*chunks)[c.prev].next = c.id;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Plan> FromStepPlanProto(const chunkflow::v1::StepPlan& msg) {
  if (msg.dp() < 1 || msg.pp() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("plan has dp ", msg.dp(), " and pp ", msg.pp(), "; both must be >= 1"));
  }
  Plan plan;
  plan.dp = msg.dp();
  plan.pp = msg.pp();
  plan.chunk_size = msg.params().chunk_size();
  plan.k = msg.params().k();
  for (int i = 0; i < msg.chunks_size(); ++i) {
    if (msg.chunks(i).id() != i) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk at index ", i, " has id ", msg.chunks(i).id()));
    }
    plan.chunks.push_back(ReadChunk(msg.chunks(i)));
  }
  if (absl::Status s = LinkChains(&plan.chunks); !s.ok()) return s;
  if (msg.stage_ops_size() != plan.dp * plan.pp) {
    return absl::InvalidArgumentError(absl::StrCat("plan has ", msg.stage_ops_size(),
                                                   " op lists; dp x pp is ", plan.dp * plan.pp));
  }
  for (const chunkflow::v1::StageOps& m : msg.stage_ops()) {
    absl::StatusOr<StageOps> so = ReadOps(m, plan.chunks.size());
    if (!so.ok()) return so.status();
    if (so->dp * plan.pp + so->stage != static_cast<int32_t>(plan.stage_ops.size())) {
      return absl::InvalidArgumentError(absl::StrCat("op list ", plan.stage_ops.size(),
                                                     " is for dp ", so->dp, " stage ", so->stage));
    }
    plan.stage_ops.push_back(std::move(*so));
  }
  return plan;
}

absl::StatusOr<Plan> FromWorkerPlanProto(const chunkflow::v1::StepPlanForWorker& msg, int32_t dp,
                                         int32_t pp) {
  const int32_t my_dp = msg.ops().dp(), my_stage = msg.ops().stage();
  if (dp < 1 || pp < 1 || my_dp < 0 || my_dp >= dp || my_stage < 0 || my_stage >= pp) {
    return absl::InvalidArgumentError(absl::StrCat("op list for dp ", my_dp, " stage ", my_stage,
                                                   " does not fit dp ", dp, " x pp ", pp));
  }
  Plan plan;
  plan.dp = dp;
  plan.pp = pp;
  plan.chunk_size = msg.params().chunk_size();
  plan.k = msg.params().k();
  int32_t max_id = -1;
  for (const chunkflow::v1::Chunk& c : msg.chunks()) {
    if (c.id() < 0 || c.id() > 10'000'000) {
      return absl::InvalidArgumentError(absl::StrCat("chunk id ", c.id(), " out of range"));
    }
    max_id = std::max(max_id, c.id());
  }
  plan.chunks.resize(static_cast<size_t>(max_id + 1));
  for (size_t i = 0; i < plan.chunks.size(); ++i) {
    plan.chunks[i].id = static_cast<int32_t>(i);
    plan.chunks[i].dp = -1;
  }
  std::vector<bool> seen(plan.chunks.size(), false);
  for (const chunkflow::v1::Chunk& c : msg.chunks()) {
    if (seen[c.id()]) return absl::InvalidArgumentError(absl::StrCat("chunk ", c.id(), " twice"));
    seen[c.id()] = true;
    plan.chunks[c.id()] = ReadChunk(c);
  }
  if (absl::Status s = LinkChains(&plan.chunks); !s.ok()) return s;
  plan.stage_ops.resize(static_cast<size_t>(dp) * pp);
  for (int32_t d = 0; d < dp; ++d) {
    for (int32_t s = 0; s < pp; ++s) {
      plan.stage_ops[d * pp + s].dp = d;
      plan.stage_ops[d * pp + s].stage = s;
    }
  }
  absl::StatusOr<StageOps> so = ReadOps(msg.ops(), plan.chunks.size());
  if (!so.ok()) return so.status();
  for (const Op& op : so->ops) {
    if (!seen[op.chunk]) {
      return absl::InvalidArgumentError(
          absl::StrCat("op on chunk ", op.chunk, ", which is not in the message"));
    }
  }
  plan.stage_ops[my_dp * pp + my_stage] = std::move(*so);
  return plan;
}

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
