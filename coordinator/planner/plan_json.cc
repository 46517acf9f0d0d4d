#include "coordinator/planner/plan_json.h"

namespace chunkflow::planner {

using nlohmann::ordered_json;

ordered_json SimToJson(const SimResult& sim) {
  ordered_json j;
  j["makespan_s"] = sim.makespan_s;
  j["bubble_ratio"] = sim.bubble_ratio;
  j["peak_memory_bytes"] = sim.peak_memory_bytes;
  j["stage_busy_s"] = sim.stage_busy_s;
  j["dp_busy_s"] = sim.dp_busy_s;
  j["dp_imbalance"] = sim.dp_imbalance;
  j["max_live_chunks_per_sequence"] = sim.max_live_chunks_per_sequence;
  return j;
}

ordered_json StepToJson(int64_t step, const Plan& plan, const SimResult* sim) {
  ordered_json j;
  j["step"] = step;
  j["strategy"] = StrategyName(plan.strategy);
  j["chunk_size"] = plan.chunk_size;
  j["k"] = plan.k;
  j["dp"] = plan.dp;
  j["pp"] = plan.pp;
  j["full_recompute"] = plan.full_recompute;
  ordered_json chunks = ordered_json::array();
  for (const Chunk& c : plan.chunks) {
    ordered_json cj;
    cj["id"] = c.id;
    cj["dp"] = c.dp;
    ordered_json pieces = ordered_json::array();
    for (const Piece& p : c.pieces) {
      pieces.push_back({{"seq", p.seq}, {"offset", p.offset}, {"length", p.length}});
    }
    cj["pieces"] = std::move(pieces);
    cj["chain_index"] = c.chain_index;
    cj["chain_length"] = c.chain_length;
    if (c.compute_tokens != c.tokens) cj["compute_tokens"] = c.compute_tokens;
    chunks.push_back(std::move(cj));
  }
  j["chunks"] = std::move(chunks);
  ordered_json ops = ordered_json::array();
  for (const StageOps& so : plan.stage_ops) {
    ordered_json list = ordered_json::array();
    for (const Op& op : so.ops) {
      ordered_json oj;
      oj["type"] = op.type == OpType::kForward ? "forward" : "backward";
      oj["chunk"] = op.chunk;
      oj["keep_activations"] = op.type == OpType::kForward && op.keep_activations;
      oj["recompute"] = op.recompute;
      list.push_back(std::move(oj));
    }
    ops.push_back({{"dp", so.dp}, {"stage", so.stage}, {"list", std::move(list)}});
  }
  j["ops"] = std::move(ops);
  if (sim != nullptr) j["sim"] = SimToJson(*sim);
  return j;
}

}  // namespace chunkflow::planner
