#include "worker/engine/engine.h"

#include <filesystem>

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/planner.h"
#include "worker/engine/pipeline.h"
#include "worker/engine/safetensors.h"

namespace chunkflow::engine {
namespace {

constexpr char kEmbed[] = "model.embed_tokens.weight";

// Biases and norm weights are not decayed.
bool Decayed(const ParamTensor& t) { return t.shape.size() == 2; }

}  // namespace

// ---------------------------------------------------------------------------
// Construction, weights and checkpoints
// ---------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const ModelConfig& config, int32_t pp) {
  if (absl::Status s = ValidateModelConfig(config); !s.ok()) return s;
  absl::StatusOr<std::vector<StageRange>> ranges = PartitionStages(config.num_hidden_layers, pp);
  if (!ranges.ok()) return ranges.status();
  return std::unique_ptr<Engine>(new Engine(config, *ranges));
}

Engine::Engine(const ModelConfig& config, const std::vector<StageRange>& ranges)
    : config_(config) {
  for (const StageRange& r : ranges) {
    params_.push_back(std::make_unique<StageParams>(config, r));
    mem_.push_back(std::make_unique<MemoryTracker>());
    stages_.push_back(std::make_unique<Stage>(params_.back().get(), mem_.back().get()));
    m_.emplace_back(static_cast<size_t>(params_.back()->numel()), 0.0f);
    v_.emplace_back(static_cast<size_t>(params_.back()->numel()), 0.0f);
  }
}

void Engine::InitRandom(uint64_t seed) {
  for (auto& p : params_) p->InitRandom(seed);
}

absl::Status LoadStageWeights(const std::string& path,
                              const std::vector<std::unique_ptr<StageParams>>& params) {
  absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::Open(path);
  if (!reader.ok()) return reader.status();
  // Load every stage into copies first: all or nothing.
  std::vector<std::unique_ptr<StageParams>> loaded;
  for (const auto& p : params) {
    loaded.push_back(std::make_unique<StageParams>(p->config(), p->range()));
    if (absl::Status s = loaded.back()->Load(*reader); !s.ok()) return s;
  }
  for (size_t s = 0; s < params.size(); ++s) params[s]->values().swap(loaded[s]->values());
  return absl::OkStatus();
}

absl::Status Engine::LoadWeights(const std::string& path) {
  return LoadStageWeights(path, params_);
}

absl::Status Engine::Save(const std::string& dir, const std::string& save_id) const {
  return SaveModel(dir, config_, params_, m_, v_, step_, save_id);
}

int64_t NextOptimizerStep(int64_t step, const TrainOptions& o) {
  return o.optimizer == OptimizerKind::kAdamW ? step + 1 : step;
}

absl::Status SaveModel(const std::string& dir, const ModelConfig& config,
                       const std::vector<std::unique_ptr<StageParams>>& params,
                       const std::vector<std::vector<float>>& m,
                       const std::vector<std::vector<float>>& v, int64_t step,
                       const std::string& save_id) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  std::vector<TensorToWrite> weights, moments;
  for (size_t s = 0; s < params.size(); ++s) {
    for (const ParamTensor& t : params[s]->tensors()) {
      // A tied embedding copied onto the last stage is saved once.
      if (s > 0 && t.name == kEmbed) continue;
      weights.push_back({t.name, DType::kF32, t.shape, params[s]->values().data() + t.offset});
      moments.push_back({"exp_avg." + t.name, DType::kF32, t.shape, m[s].data() + t.offset});
      moments.push_back({"exp_avg_sq." + t.name, DType::kF32, t.shape, v[s].data() + t.offset});
    }
  }
  std::map<std::string, std::string> model_meta = {{"format", "pt"}};
  std::map<std::string, std::string> optimizer_meta = {{"step", std::to_string(step)}};
  if (!save_id.empty()) {
    model_meta[kSaveIdKey] = save_id;
    optimizer_meta[kSaveIdKey] = save_id;
  }
  if (absl::Status s = WriteSafetensors(dir + "/model.safetensors", weights, model_meta);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = WriteSafetensors(dir + "/optimizer.safetensors", moments, optimizer_meta);
      !s.ok()) {
    return s;
  }
  const std::string path = dir + "/config.json";
  std::ofstream out(path + ".tmp");
  out << ToHfConfigJson(config);
  out.close();
  if (!out || std::rename((path + ".tmp").c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status Engine::LoadOptimizer(const std::string& path) {
  return LoadOptimizerState(path, params_, &m_, &v_, &step_);
}

absl::Status LoadOptimizerState(const std::string& path,
                                const std::vector<std::unique_ptr<StageParams>>& params,
                                std::vector<std::vector<float>>* m_out,
                                std::vector<std::vector<float>>* v_out, int64_t* step_out) {
  absl::StatusOr<SafetensorsReader> reader = SafetensorsReader::Open(path);
  if (!reader.ok()) return reader.status();
  int64_t step = 0;
  auto it = reader->metadata().find("step");
  if (it == reader->metadata().end() || !absl::SimpleAtoi(it->second, &step) || step < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": metadata 'step' must be a count >= 0, got '",
        it == reader->metadata().end() ? "(missing)" : it->second, "'"));
  }
  std::vector<std::vector<float>> m(params.size()), v(params.size());
  for (size_t s = 0; s < params.size(); ++s) {
    m[s].resize(static_cast<size_t>(params[s]->numel()));
    v[s].resize(static_cast<size_t>(params[s]->numel()));
    for (const ParamTensor& t : params[s]->tensors()) {
      for (auto [prefix, buf] : {std::pair{"exp_avg.", &m[s]}, std::pair{"exp_avg_sq.", &v[s]}}) {
        absl::Status st = reader->ReadF32(prefix + t.name, t.shape, buf->data() + t.offset);
        if (!st.ok()) return st;
      }
    }
  }
  m_out->swap(m);
  v_out->swap(v);
  *step_out = step;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> Engine::Get(const std::string& name, bool grad) const {
  for (const auto& p : params_) {
    if (const ParamTensor* t = p->Find(name)) {
      const std::vector<float>& buf = grad ? p->grads() : p->values();
      return std::vector<float>(buf.begin() + t->offset, buf.begin() + t->offset + t->numel);
    }
  }
  return absl::NotFoundError(absl::StrCat("the model has no tensor '", name, "'"));
}

absl::StatusOr<std::vector<float>> Engine::Gradient(const std::string& name) const {
  return Get(name, true);
}
absl::StatusOr<std::vector<float>> Engine::Value(const std::string& name) const {
  return Get(name, false);
}

// ---------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------

absl::StatusOr<StepResult> Engine::ComputeGradients(const StepData& data, int64_t chunk_size,
                                                    int32_t k) {
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<PlannedStep> planned = PlanLocalStep(config_, pp(), data, chunk_size, k);
  if (!planned.ok()) return planned.status();
  StepResult result;
  result.tokens = planned->tokens;
  result.targets = planned->targets;
  result.chunks = static_cast<int64_t>(planned->plan.chunks.size());
  const float scale = planned->loss_scale;
  const planner::Plan* plan = &planned->plan;
  const std::map<int32_t, ChunkInput>& chunks = planned->chunks;

  std::vector<StageExecutor*> stages;
  std::vector<std::vector<planner::Op>> ops;
  for (int32_t s = 0; s < pp(); ++s) {
    params_[s]->ZeroGrads();
    stages_[s]->Reset();
    stages_[s]->ClearLosses();
    stages_[s]->set_loss_scale(scale);
    mem_[s]->ResetPeak();
    stages.push_back(stages_[s].get());
    ops.push_back(plan->ops(0, s).ops);
  }
  absl::Status run = LocalPipeline(stages).Run(ops, chunks);
  if (!run.ok()) {
    for (auto& st : stages_) st->Reset();
    return run;
  }
  SumTiedGradients();
  SummarizeStep(stages_.back()->losses(), mem_, &result);
  result.grad_norm = GradNorm();
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

void Engine::SumTiedGradients() {
  if (!config_.tie_word_embeddings || pp() == 1) return;
  StageParams& first = *params_.front();
  StageParams& last = *params_.back();
  const ParamTensor* a = first.Find(kEmbed);
  const ParamTensor* b = last.Find(kEmbed);
  float* ga = first.grads().data() + a->offset;
  float* gb = last.grads().data() + b->offset;
  for (int64_t i = 0; i < a->numel; ++i) gb[i] = ga[i] = ga[i] + gb[i];
}

double StageGradSquares(const StageParams& p) {
  double sq = 0;
  const bool tied_copy = !p.range().first && p.range().last && p.config().tie_word_embeddings;
  for (const ParamTensor& t : p.tensors()) {
    if (tied_copy && t.name == kEmbed) continue;  // the first stage's copy counts
    sq += kernels::cpu::sum_of_squares(p.grads().data() + t.offset, t.numel);
  }
  return sq;
}

void ApplyUpdate(StageParams& p, std::vector<float>& m, std::vector<float>& v, int64_t step,
                 const TrainOptions& o) {
  kernels::cpu::AdamWConfig cfg;
  cfg.lr = o.lr;
  cfg.beta1 = o.beta1;
  cfg.beta2 = o.beta2;
  cfg.eps = o.eps;
  for (const ParamTensor& t : p.tensors()) {
    float* w = p.values().data() + t.offset;
    const float* g = p.grads().data() + t.offset;
    if (o.optimizer == OptimizerKind::kSgd) {
      kernels::cpu::sgd_update(w, g, t.numel, o.lr);
      continue;
    }
    cfg.weight_decay = Decayed(t) ? o.weight_decay : 0.0f;
    kernels::cpu::adamw_update(w, g, m.data() + t.offset, v.data() + t.offset, t.numel, step, cfg);
  }
}

double Engine::GradNorm() const {
  double sq = 0;
  for (const auto& p : params_) sq += StageGradSquares(*p);
  return std::sqrt(sq);
}

void Engine::ApplyOptimizer(const TrainOptions& o) {
  step_ = NextOptimizerStep(step_, o);
  for (size_t s = 0; s < params_.size(); ++s) ApplyUpdate(*params_[s], m_[s], v_[s], step_, o);
}

void SummarizeStep(const std::map<int64_t, SequenceLoss>& losses,
                   const std::vector<std::unique_ptr<MemoryTracker>>& mem, StepResult* result) {
  result->losses = losses;
  double sum = 0;
  for (const auto& [id, l] : losses) sum += l.sum;
  result->loss = result->targets > 0 ? sum / static_cast<double>(result->targets) : 0.0;
  for (const auto& m : mem) {
    result->peak_bytes = std::max(result->peak_bytes, m->peak());
    result->peak_activation_bytes =
        std::max(result->peak_activation_bytes, m->peak(MemoryTracker::kActivations));
    result->peak_state_bytes = std::max(result->peak_state_bytes, m->peak(MemoryTracker::kState));
  }
}

absl::StatusOr<PlannedStep> PlanLocalStep(const ModelConfig& config, int32_t pp,
                                          const StepData& data, int64_t chunk_size, int32_t k) {
  planner::PlanRequest req;
  for (const auto& [id, s] : data.sequences) {
    req.sequences.push_back({id, static_cast<int64_t>(s.tokens.size())});
  }
  req.chunk_size = chunk_size;
  req.k = k;
  req.pp = pp;
  req.cost = planner::CostModelFromShape(ShapeOf(config), pp, planner::DeviceModel{});
  absl::StatusOr<planner::Plan> plan = planner::BuildPlan(req);
  if (!plan.ok()) return plan.status();
  PlannedStep out;
  for (const planner::Chunk& c : plan->chunks) {
    absl::StatusOr<ChunkInput> in = MakeChunkInput(c, data, config.vocab_size);
    if (!in.ok()) return in.status();
    out.tokens += in->rows;
    out.chunks.emplace(c.id, std::move(*in));
  }
  out.plan = std::move(*plan);
  out.targets = data.TargetCount();
  out.loss_scale = out.targets > 0 ? 1.0f / static_cast<float>(out.targets) : 0.0f;
  return out;
}

planner::ModelShape ShapeOf(const ModelConfig& c) {
  planner::ModelShape m;
  m.name = "engine";
  m.hidden = c.hidden_size;
  m.intermediate = c.intermediate_size;
  m.layers = c.num_hidden_layers;
  m.heads = c.num_attention_heads;
  m.kv_heads = c.num_key_value_heads;
  m.vocab = c.vocab_size;
  m.tied_embeddings = c.tie_word_embeddings;
  return m;
}

absl::Status ValidateTrainOptions(const TrainOptions& options) {
  if (!(options.lr >= 0) || !std::isfinite(options.lr)) {
    return absl::InvalidArgumentError(absl::StrCat("lr must be finite and >= 0, got ", options.lr));
  }
  if (!(options.clip >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("clip must be >= 0, got ", options.clip));
  }
  if (!(options.beta1 >= 0 && options.beta1 < 1) || !(options.beta2 >= 0 && options.beta2 < 1)) {
    return absl::InvalidArgumentError(absl::StrCat("beta1 and beta2 must be in [0, 1), got ",
                                                   options.beta1, " and ", options.beta2));
  }
  if (!(options.eps > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("eps must be > 0, got ", options.eps));
  }
  if (!(options.weight_decay >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight_decay must be >= 0, got ", options.weight_decay));
  }
  return absl::OkStatus();
}

float ClipCoefficient(double grad_norm, float clip) {
  // torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6).
  return clip > 0 && grad_norm > clip ? static_cast<float>(clip / (grad_norm + 1e-6)) : 1.0f;
}

absl::Status CheckGradNorm(double grad_norm, std::optional<double> loss) {
  if (std::isfinite(grad_norm)) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("gradient norm is ", grad_norm,
                                          loss ? absl::StrCat(" (loss ", *loss, ")") : "",
                                          "; the update was skipped"));
}

absl::StatusOr<StepResult> Engine::TrainStep(const StepData& data, const TrainOptions& options) {
  if (absl::Status s = ValidateTrainOptions(options); !s.ok()) return s;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<StepResult> r = ComputeGradients(data, options.chunk_size, options.k);
  if (!r.ok()) return r;
  if (absl::Status s = CheckGradNorm(r->grad_norm, r->loss); !s.ok()) return s;
  if (const float coef = ClipCoefficient(r->grad_norm, options.clip); coef != 1.0f) {
    for (auto& p : params_) kernels::cpu::scale(p->grads().data(), p->numel(), coef);
  }
  ApplyOptimizer(options);
  r->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

absl::StatusOr<std::map<int64_t, SequenceLoss>> Engine::Evaluate(const StepData& data,
                                                                 int64_t chunk_size) {
  if (chunk_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("chunk_size must be >= 1, got ", chunk_size));
  }
  std::map<int64_t, SequenceLoss> out;
  std::vector<float> x, y;
  for (const auto& [id, seq] : data.sequences) {
    const int64_t len = static_cast<int64_t>(seq.tokens.size());
    for (auto& st : stages_) st->ClearLosses();
    // One sequence at a time, its chunks in order: the state store carries
    // the K/V of earlier chunks.
    for (int64_t off = 0; off < len; off += chunk_size) {
      planner::Chunk c;
      c.id = static_cast<int32_t>(off / chunk_size);
      c.pieces.push_back({id, off, std::min(chunk_size, len - off)});
      absl::StatusOr<ChunkInput> in = MakeChunkInput(c, data, config_.vocab_size);
      if (!in.ok()) {
        for (auto& st : stages_) st->Reset();
        return in.status();
      }
      for (int32_t s = 0; s < pp(); ++s) {
        y.assign(static_cast<size_t>(in->rows * config_.hidden_size), 0.0f);
        absl::Status st = stages_[s]->Forward(*in, x.data(), y.data(), ForwardKind::kInference);
        if (!st.ok()) {
          for (auto& stage : stages_) stage->Reset();
          return st;
        }
        x.swap(y);
      }
    }
    out[id] = stages_.back()->losses().count(id) ? stages_.back()->losses().at(id)
                                                  : SequenceLoss{};
    for (auto& st : stages_) st->Reset();
  }
  return out;
}

absl::StatusOr<std::vector<float>> Engine::Logits(const SequenceData& sequence) {
  StepData data;
  data.sequences[sequence.id] = sequence;
  std::vector<float> logits;
  stages_.back()->set_logits_sink(&logits);
  absl::StatusOr<std::map<int64_t, SequenceLoss>> r =
      Evaluate(data, std::max<int64_t>(1, static_cast<int64_t>(sequence.tokens.size())));
  stages_.back()->set_logits_sink(nullptr);
  if (!r.ok()) return r.status();
  return logits;
}

}  // namespace chunkflow::engine
