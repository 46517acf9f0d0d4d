#include "cli/plan_command.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "coordinator/cursor.h"
#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/plan_json.h"
#include "coordinator/planner/planner.h"
#include "coordinator/planner/simulator.h"
#include "dataset/dataset.h"
#include "nlohmann/json.hpp"

namespace chunkflow::cli {
namespace {

using planner::CostModel;
using planner::MemoryModel;
using planner::ModelShape;
using planner::Plan;
using planner::PlanRequest;
using planner::SimResult;
using planner::Strategy;

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// One way of planning the batches: ChunkFlow at (C, K) or a baseline.
struct Variant {
  std::string label;
  Strategy strategy = Strategy::kChunkFlow;
  int64_t chunk_size = 0;
  int32_t k = 1;
  bool recompute = false;
};

// A variant's result over all planned steps.
struct Summary {
  Variant variant;
  double chunks_per_step = 0;
  double dp_imbalance = 0;  // mean over steps
  double bubble_ratio = 0;  // mean over steps
  double step_time_s = 0;   // mean over steps
  double tokens_per_s = 0;
  std::vector<int64_t> peak_memory_bytes;  // per stage, max over steps
  bool fits = false;
  std::vector<Plan> plans;  // kept only when asked (JSON)
  std::vector<SimResult> sims;
};

struct Context {
  const PlanOptions& opt;
  ModelShape model;
  CostModel cost;
  MemoryModel memory;
  int64_t budget_bytes = 0;
  int64_t max_length = 0;
  std::vector<std::vector<planner::Sequence>> batches;
  int64_t tokens_per_step = 0;  // mean
};

// ===========================================================================
// Inputs
// ===========================================================================

absl::Status CheckOptions(const PlanOptions& o) {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (o.global_batch < 1) return bad("--global_batch must be >= 1, got ", o.global_batch);
  if (o.steps < 1) return bad("--steps must be >= 1, got ", o.steps);
  if (o.chunk_size < 1) return bad("--chunk_size must be >= 1, got ", o.chunk_size);
  if (o.k < 1) return bad("--k must be >= 1, got ", o.k);
  if (o.dp < 1) return bad("--dp must be >= 1, got ", o.dp);
  if (o.pp < 1) return bad("--pp must be >= 1, got ", o.pp);
  // Upper bounds keep the byte and time arithmetic finite.
  if (!(o.device_tflops > 0 && o.device_tflops <= 1e6)) {
    return bad("--device_tflops must be in (0, 1e6], got ", o.device_tflops);
  }
  if (!(o.memory_budget_gib > 0 && o.memory_budget_gib <= 1e6)) {
    return bad("--memory_budget_gib must be in (0, 1e6], got ", o.memory_budget_gib);
  }
  if (o.max_length < 0) return bad("--max_length must be >= 0, got ", o.max_length);
  if (o.format != "table" && o.format != "json") {
    return bad("--format must be 'table' or 'json', got '", o.format, "'");
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelShape> LoadModel(const PlanOptions& o) {
  if (o.model_config.empty()) return planner::ModelPreset(o.model);
  std::string path = o.model_config;
  if (!absl::EndsWith(path, ".json")) path = absl::StrCat(path, "/config.json");
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("--model_config: cannot read ", path,
                                            "; give a Hugging Face config.json or its folder"));
  }
  std::stringstream text;
  text << in.rdbuf();
  return planner::ModelShapeFromHfConfig(text.str(), path);
}

absl::Status LoadBatches(const std::vector<int64_t>& lengths, Context* ctx) {
  const PlanOptions& o = ctx->opt;
  if (static_cast<int64_t>(lengths.size()) < o.global_batch) {
    return absl::InvalidArgumentError(
        absl::StrCat("--global_batch ", o.global_batch, " is larger than the dataset (",
                     lengths.size(), " documents)"));
  }
  absl::StatusOr<DatasetCursor> cursor =
      DatasetCursor::Create(static_cast<int64_t>(lengths.size()), o.seed, o.global_batch);
  if (!cursor.ok()) return cursor.status();
  int64_t tokens = 0;
  for (int64_t step = 0; step < o.steps; ++step) {
    absl::StatusOr<std::vector<int64_t>> docs = cursor->Batch(step);
    if (!docs.ok()) return docs.status();
    std::vector<planner::Sequence> batch;
    for (int64_t doc : *docs) {
      batch.push_back({doc, lengths[doc]});
      tokens += lengths[doc];
    }
    ctx->batches.push_back(std::move(batch));
  }
  ctx->tokens_per_step = tokens / o.steps;
  ctx->max_length = o.max_length;
  if (ctx->max_length == 0) {
    ctx->max_length = *std::max_element(lengths.begin(), lengths.end());
  }
  return absl::OkStatus();
}

// ===========================================================================
// Evaluation
// ===========================================================================

absl::StatusOr<Summary> Evaluate(const Context& ctx, const Variant& v, bool keep_plans) {
  Summary sum;
  sum.variant = v;
  sum.peak_memory_bytes.assign(ctx.opt.pp, 0);
  for (const std::vector<planner::Sequence>& batch : ctx.batches) {
    PlanRequest req;
    req.sequences = batch;
    req.strategy = v.strategy;
    req.chunk_size = v.chunk_size;
    req.k = v.k;
    req.dp = ctx.opt.dp;
    req.pp = ctx.opt.pp;
    req.max_length = ctx.max_length;
    req.full_recompute = v.recompute;
    req.cost = ctx.cost;
    absl::StatusOr<Plan> plan = planner::BuildPlan(req);
    if (!plan.ok()) return plan.status();
    absl::StatusOr<SimResult> sim = planner::Simulate(*plan, ctx.cost, ctx.memory);
    if (!sim.ok()) return sim.status();
    sum.chunks_per_step += static_cast<double>(plan->chunks.size());
    sum.dp_imbalance += sim->dp_imbalance;
    sum.bubble_ratio += sim->bubble_ratio;
    sum.step_time_s += sim->makespan_s;
    for (int32_t s = 0; s < ctx.opt.pp; ++s) {
      sum.peak_memory_bytes[s] = std::max(sum.peak_memory_bytes[s], sim->peak_memory_bytes[s]);
    }
    if (keep_plans) {
      sum.plans.push_back(*std::move(plan));
      sum.sims.push_back(*std::move(sim));
    }
  }
  const double n = static_cast<double>(ctx.batches.size());
  sum.chunks_per_step /= n;
  sum.dp_imbalance /= n;
  sum.bubble_ratio /= n;
  sum.step_time_s /= n;
  sum.tokens_per_s = static_cast<double>(ctx.tokens_per_step) / sum.step_time_s;
  sum.fits = *std::max_element(sum.peak_memory_bytes.begin(), sum.peak_memory_bytes.end()) <=
             ctx.budget_bytes;
  return sum;
}

std::string ChunkFlowLabel(int64_t c, int32_t k) {
  const std::string size = c % 1024 == 0 ? absl::StrCat(c / 1024, "K") : absl::StrCat(c);
  return absl::StrCat("chunkflow C=", size, " K=", k);
}

// Fastest (ChunkSize, K) that fits; every candidate is returned for the table.
absl::StatusOr<std::vector<Summary>> Sweep(const Context& ctx, std::ostream& progress) {
  std::vector<int64_t> sizes;
  for (int64_t c = 1024; c <= std::max<int64_t>(1024, ctx.max_length) && c <= (1 << 18);
       c *= 2) {
    sizes.push_back(c);
  }
  const std::vector<int32_t> ks = {1, 2, 4, 8};
  std::vector<Summary> out;
  int done = 0;
  const int total = static_cast<int>(sizes.size() * ks.size());
  for (int64_t c : sizes) {
    for (int32_t k : ks) {
      Variant v{ChunkFlowLabel(c, k), Strategy::kChunkFlow, c, k, false};
      absl::StatusOr<Summary> s = Evaluate(ctx, v, false);
      if (!s.ok()) return s.status();
      progress << absl::StrFormat("sweep %d/%d: %-22s %8.3f s/step  peak %6.1f GiB%s\n",
                                  ++done, total, v.label, s->step_time_s,
                                  *std::max_element(s->peak_memory_bytes.begin(),
                                                    s->peak_memory_bytes.end()) / kGiB,
                                  s->fits ? "" : "  (over budget)");
      out.push_back(*std::move(s));
    }
  }
  return out;
}

// ===========================================================================
// Output
// ===========================================================================

std::string PeakList(const std::vector<int64_t>& peaks) {
  std::vector<std::string> parts;
  for (int64_t b : peaks) parts.push_back(absl::StrFormat("%.1f", b / kGiB));
  return absl::StrJoin(parts, "/");
}

// Reference for the speedup column: the fastest Megatron-style baseline that
// fits the budget, or the fastest one if none fits.
const Summary* Reference(const std::vector<Summary>& rows) {
  const Summary* best = nullptr;
  for (bool need_fit : {true, false}) {
    for (const Summary& s : rows) {
      const bool megatron = s.variant.strategy == Strategy::kMegatronPad ||
                            s.variant.strategy == Strategy::kMegatronPack;
      if (!megatron || (need_fit && !s.fits)) continue;
      if (best == nullptr || s.step_time_s < best->step_time_s) best = &s;
    }
    if (best != nullptr) return best;
  }
  return best;
}

void PrintTable(const Context& ctx, const std::vector<Summary>& rows, const Summary* ref,
                std::ostream& out) {
  out << absl::StrFormat(
      "model %s (%d layers, hidden %d), dp=%d pp=%d, global batch %d, %d steps, %.0f "
      "TFLOP/s per device, budget %.0f GiB\n",
      ctx.model.name, ctx.model.layers, ctx.model.hidden, ctx.opt.dp, ctx.opt.pp,
      ctx.opt.global_batch, ctx.opt.steps, ctx.opt.device_tflops, ctx.opt.memory_budget_gib);
  out << absl::StrFormat("%-28s %9s %9s %7s %10s %12s  %-28s %4s %8s\n", "strategy",
                         "chunks", "dp-imbal", "bubble", "step(s)", "tokens/s",
                         "peak GiB per stage", "fits", "speedup");
  for (const Summary& s : rows) {
    out << absl::StrFormat("%-28s %9.1f %9.3f %6.1f%% %10.3f %12.0f  %-28s %4s %7.2fx\n",
                           s.variant.label, s.chunks_per_step, s.dp_imbalance,
                           100 * s.bubble_ratio, s.step_time_s, s.tokens_per_s,
                           PeakList(s.peak_memory_bytes), s.fits ? "yes" : "NO",
                           ref->step_time_s / s.step_time_s);
  }
  out << absl::StrFormat("speedup is against %s; step time and memory are simulated.\n",
                         ref->variant.label);
}

nlohmann::ordered_json SummaryJson(const Summary& s) {
  nlohmann::ordered_json j;
  j["strategy"] = s.variant.label;
  j["chunks_per_step"] = s.chunks_per_step;
  j["dp_imbalance"] = s.dp_imbalance;
  j["bubble_ratio"] = s.bubble_ratio;
  j["step_time_s"] = s.step_time_s;
  j["tokens_per_s"] = s.tokens_per_s;
  j["peak_memory_bytes"] = s.peak_memory_bytes;
  j["fits"] = s.fits;
  return j;
}

void PrintJson(const Context& ctx, const std::vector<Summary>& rows, const Summary& chosen,
               const std::vector<Summary>& sweep, std::ostream& out) {
  nlohmann::ordered_json j;
  j["dataset"] = ctx.opt.dataset;
  j["model"] = ctx.model.name;
  j["dp"] = ctx.opt.dp;
  j["pp"] = ctx.opt.pp;
  j["global_batch"] = ctx.opt.global_batch;
  j["chunk_size"] = chosen.variant.chunk_size;
  j["k"] = chosen.variant.k;
  j["memory_budget_bytes"] = ctx.budget_bytes;
  nlohmann::ordered_json steps = nlohmann::ordered_json::array();
  for (size_t i = 0; i < chosen.plans.size(); ++i) {
    steps.push_back(planner::StepToJson(static_cast<int64_t>(i), chosen.plans[i],
                                        &chosen.sims[i]));
  }
  j["steps"] = std::move(steps);
  nlohmann::ordered_json comparison = nlohmann::ordered_json::array();
  for (const Summary& s : rows) comparison.push_back(SummaryJson(s));
  j["comparison"] = std::move(comparison);
  if (!sweep.empty()) {
    nlohmann::ordered_json sj = nlohmann::ordered_json::array();
    for (const Summary& s : sweep) sj.push_back(SummaryJson(s));
    j["sweep"] = std::move(sj);
  }
  out << j.dump(1) << "\n";
}

}  // namespace

absl::Status RunPlanCommand(const PlanOptions& opt, std::ostream& out, std::ostream& progress) {
  if (absl::Status s = CheckOptions(opt); !s.ok()) return s;
  Context ctx{opt};
  absl::StatusOr<ModelShape> model = LoadModel(opt);
  if (!model.ok()) return model.status();
  ctx.model = *model;
  if (opt.pp > ctx.model.layers) {
    return absl::InvalidArgumentError(absl::StrCat("--pp ", opt.pp, " is more stages than the ",
                                                   ctx.model.layers, " layers of model ",
                                                   ctx.model.name));
  }
  ctx.cost = planner::CostModelFromShape(ctx.model, opt.pp,
                                         planner::DeviceModel{opt.device_tflops * 1e12, 0});
  ctx.memory = planner::MemoryModelFromShape(ctx.model, opt.pp);
  ctx.budget_bytes = static_cast<int64_t>(opt.memory_budget_gib * kGiB);

  progress << "reading " << opt.dataset << "\n";
  absl::StatusOr<std::vector<int64_t>> lengths = dataset::ReadDocumentLengths(opt.dataset);
  if (!lengths.ok()) return lengths.status();
  if (absl::Status s = LoadBatches(*lengths, &ctx); !s.ok()) return s;

  Variant cf{ChunkFlowLabel(opt.chunk_size, opt.k), Strategy::kChunkFlow, opt.chunk_size, opt.k,
             false};
  std::vector<Summary> sweep;
  if (opt.sweep) {
    absl::StatusOr<std::vector<Summary>> swept = Sweep(ctx, progress);
    if (!swept.ok()) return swept.status();
    sweep = *std::move(swept);
    const Summary* best = nullptr;
    for (const Summary& s : sweep) {
      if (s.fits && (best == nullptr || s.step_time_s < best->step_time_s)) best = &s;
    }
    if (best == nullptr) {
      progress << "sweep: no (ChunkSize, K) fits the memory budget; keeping --chunk_size/--k\n";
    } else {
      cf = best->variant;
      progress << "sweep: best that fits is " << cf.label << "\n";
    }
  }
  const std::string len = absl::StrCat(ctx.max_length);
  const std::vector<Variant> variants = {
      cf,
      {"packing max=" + len, Strategy::kPacking, 0, 1, false},
      {"megatron-pad", Strategy::kMegatronPad, 0, 1, false},
      {"megatron-pad +recompute", Strategy::kMegatronPad, 0, 1, true},
      {"megatron-pack max=" + len, Strategy::kMegatronPack, 0, 1, false},
      {"megatron-pack +recompute", Strategy::kMegatronPack, 0, 1, true},
  };
  std::vector<Summary> rows;
  for (const Variant& v : variants) {
    progress << "planning " << v.label << "\n";
    absl::StatusOr<Summary> s = Evaluate(ctx, v, opt.format == "json" && &v == &variants[0]);
    if (!s.ok()) return s.status();
    rows.push_back(*std::move(s));
  }
  if (opt.format == "json") {
    PrintJson(ctx, rows, rows[0], sweep, out);
  } else {
    if (!sweep.empty()) {
      out << "sweep (ChunkSize x K), simulated:\n";
      PrintTable(ctx, sweep, Reference(rows), out);
      out << "\n";
    }
    PrintTable(ctx, rows, Reference(rows), out);
  }
  return absl::OkStatus();
}

}  // namespace chunkflow::cli
