#include "worker/engine/cuda/cuda_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/status.h"
#include "worker/engine/pipeline.h"
#include "worker/engine/stage_executor.h"

namespace chunkflow::engine::cuda {
namespace {

constexpr char kEmbed[] = "model.embed_tokens.weight";

}  // namespace

absl::StatusOr<std::unique_ptr<CudaEngine>> CudaEngine::Create(const ModelConfig& config,
                                                               int32_t pp,
                                                               const CudaEngineOptions& options) {
  if (absl::Status s = ValidateModelConfig(config); !s.ok()) return s;
  absl::StatusOr<std::vector<StageRange>> ranges = PartitionStages(config.num_hidden_layers, pp);
  if (!ranges.ok()) return ranges.status();
  absl::StatusOr<std::unique_ptr<DeviceContext>> ctx =
      DeviceContext::Create(options.device, options.memory_budget_bytes);
  if (!ctx.ok()) return ctx.status();
  std::unique_ptr<CudaEngine> e(new CudaEngine(config, std::move(*ctx)));
  CudaStageOptions so;
  so.precision = options.precision;
  so.head_rows = options.head_rows;
  so.attention = options.attention;
  so.offload_state = options.offload_state;
  so.fused_elementwise = options.fused_elementwise;
  for (const StageRange& r : *ranges) {
    e->params_.push_back(std::make_unique<StageParams>(config, r));
    e->mem_.push_back(std::make_unique<MemoryTracker>());
    absl::StatusOr<std::unique_ptr<CudaStage>> st =
        CudaStage::Create(e->params_.back().get(), e->ctx_.get(), e->mem_.back().get(), so);
    if (!st.ok()) return st.status();
    e->stages_.push_back(std::move(*st));
  }
  return e;
}

CudaEngine::CudaEngine(const ModelConfig& config, std::unique_ptr<DeviceContext> ctx)
    : config_(config), ctx_(std::move(ctx)) {}

CudaEngine::~CudaEngine() {
  stages_.clear();  // device arrays back to the allocator before the context goes
}

absl::Status CudaEngine::UploadWeights() {
  for (auto& st : stages_) {
    if (absl::Status s = st->UploadParams(); !s.ok()) return s;
  }
  return ctx_->Sync("upload weights");
}

absl::Status CudaEngine::InitRandom(uint64_t seed) {
  for (auto& p : params_) p->InitRandom(seed);
  return UploadWeights();
}

absl::Status CudaEngine::LoadWeights(const std::string& path) {
  if (absl::Status s = LoadStageWeights(path, params_); !s.ok()) return s;
  return UploadWeights();
}

absl::Status CudaEngine::Save(const std::string& dir, const std::string& save_id) {
  std::vector<std::vector<float>> m(params_.size()), v(params_.size());
  for (size_t s = 0; s < params_.size(); ++s) {
    if (absl::Status st = stages_[s]->DownloadParams(); !st.ok()) return st;
    if (absl::Status st = stages_[s]->GetMoments(&m[s], &v[s]); !st.ok()) return st;
  }
  return SaveModel(dir, config_, params_, m, v, step_, save_id);
}

absl::Status CudaEngine::LoadOptimizer(const std::string& path) {
  std::vector<std::vector<float>> m, v;
  int64_t step = 0;
  if (absl::Status s = LoadOptimizerState(path, params_, &m, &v, &step); !s.ok()) return s;
  for (size_t s = 0; s < params_.size(); ++s) {
    if (absl::Status st = stages_[s]->SetMoments(m[s], v[s]); !st.ok()) return st;
  }
  step_ = step;
  return ctx_->Sync("load the optimizer state");
}

absl::Status CudaEngine::SumTiedGradients() {
  if (!config_.tie_word_embeddings || pp() == 1) return absl::OkStatus();
  const ParamTensor* a = params_.front()->Find(kEmbed);
  const ParamTensor* b = params_.back()->Find(kEmbed);
  float* ga = stages_.front()->device_grads() + a->offset;
  float* gb = stages_.back()->device_grads() + b->offset;
  if (absl::Status s = kernels::cuda::CudaCheck(
          kernels::cuda::add_to(ga, gb, a->numel, ctx_->stream()), "sum tied embedding gradients");
      !s.ok()) {
    return s;
  }
  return CopyOnDevice(*ctx_, gb, ga, a->numel * static_cast<int64_t>(sizeof(float)),
                      "copy the tied embedding gradient");
}

absl::StatusOr<StepResult> CudaEngine::ComputeGradients(const StepData& data, int64_t chunk_size,
                                                        int32_t k) {
  const auto start = std::chrono::steady_clock::now();
  if (absl::Status s = ctx_->Activate(); !s.ok()) return s;
  absl::StatusOr<PlannedStep> planned = PlanLocalStep(config_, pp(), data, chunk_size, k);
  if (!planned.ok()) return planned.status();
  StepResult result;
  result.tokens = planned->tokens;
  result.targets = planned->targets;
  result.chunks = static_cast<int64_t>(planned->plan.chunks.size());

  std::vector<StageExecutor*> stages;
  std::vector<std::vector<planner::Op>> ops;
  for (int32_t s = 0; s < pp(); ++s) {
    stages_[s]->Reset();
    if (absl::Status st = stages_[s]->ZeroGrads(); !st.ok()) return st;
    stages_[s]->ClearLosses();
    stages_[s]->set_loss_scale(planned->loss_scale);
    mem_[s]->ResetPeak();
    stages.push_back(stages_[s].get());
    ops.push_back(planned->plan.ops(0, s).ops);
    stages_[s]->set_chunks_held(MaxChunksHeld(ops.back()));
    // Offloaded state pinned before the first op, as the step runner does
    // (here nothing waits on a peer, so it only keeps the timing the same).
    // The stages share one device: each predicts against the room the
    // others' state has not taken yet, and Grow decides again.
    stages_[s]->PrepareStep(StateTimelineOf(planned->plan, ops.back(), data));
  }
  ctx_->allocator().ResetPeak();
  absl::Status run = LocalPipeline(stages).Run(ops, planned->chunks);
  if (run.ok()) run = SumTiedGradients();
  if (run.ok()) run = ctx_->Sync("step");
  if (!run.ok()) {
    for (auto& st : stages_) st->Reset();
    return run;
  }
  SummarizeStep(stages_.back()->losses(), mem_, &result);
  result.peak_device_bytes = ctx_->allocator().peak_in_use();
  std::set<int64_t> offloaded;
  for (auto& st : stages_) {
    offloaded.insert(st->offloaded_this_step().begin(), st->offloaded_this_step().end());
    result.pinned_mid_step_bytes += st->pinned_mid_step_bytes();
  }
  result.offloaded_sequences = static_cast<int64_t>(offloaded.size());
  double sq = 0;
  for (auto& st : stages_) {
    absl::StatusOr<double> part = st->GradSquares();
    if (!part.ok()) return part.status();
    sq += *part;
  }
  result.grad_norm = std::sqrt(sq);
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

absl::StatusOr<StepResult> CudaEngine::TrainStep(const StepData& data,
                                                 const TrainOptions& options) {
  if (absl::Status s = ValidateTrainOptions(options); !s.ok()) return s;
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<StepResult> r = ComputeGradients(data, options.chunk_size, options.k);
  if (!r.ok()) return r;
  if (absl::Status s = CheckGradNorm(r->grad_norm, r->loss); !s.ok()) return s;
  if (const float coef = ClipCoefficient(r->grad_norm, options.clip); coef != 1.0f) {
    for (auto& st : stages_) {
      if (absl::Status s = st->ScaleGrads(coef); !s.ok()) return s;
    }
  }
  step_ = NextOptimizerStep(step_, options);
  for (auto& st : stages_) {
    if (absl::Status s = st->ApplyUpdate(step_, options); !s.ok()) return s;
  }
  if (absl::Status s = ctx_->Sync("optimizer update"); !s.ok()) return s;
  r->peak_device_bytes = std::max(r->peak_device_bytes, ctx_->allocator().peak_in_use());
  r->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

absl::StatusOr<std::vector<float>> CudaEngine::Gradient(const std::string& name) {
  for (size_t s = 0; s < params_.size(); ++s) {
    if (const ParamTensor* t = params_[s]->Find(name)) {
      if (absl::Status st = stages_[s]->DownloadGrads(); !st.ok()) return st;
      const std::vector<float>& g = params_[s]->grads();
      return std::vector<float>(g.begin() + t->offset, g.begin() + t->offset + t->numel);
    }
  }
  return absl::NotFoundError(absl::StrCat("the model has no tensor '", name, "'"));
}

absl::StatusOr<std::vector<float>> CudaEngine::Value(const std::string& name) {
  for (size_t s = 0; s < params_.size(); ++s) {
    if (const ParamTensor* t = params_[s]->Find(name)) {
      if (absl::Status st = stages_[s]->DownloadParams(); !st.ok()) return st;
      const std::vector<float>& v = params_[s]->values();
      return std::vector<float>(v.begin() + t->offset, v.begin() + t->offset + t->numel);
    }
  }
  return absl::NotFoundError(absl::StrCat("the model has no tensor '", name, "'"));
}

}  // namespace chunkflow::engine::cuda
