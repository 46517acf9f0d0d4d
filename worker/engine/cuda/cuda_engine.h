// The training engine of one process on one CUDA device: engine::Engine's
// step (plan the global batch, run every stage's op list through the local
// pipeline, sum tied-embedding gradients, clip the global norm, update) with
// CudaStage stages. Weights, gradients and the AdamW moments stay on the
// device between steps; the host StageParams are the source for
// initialisation and loading, and the place Value / Gradient download into.
//
//   CudaEngineOptions o;  o.precision = Precision::kBf16;
//   absl::StatusOr<std::unique_ptr<CudaEngine>> e = CudaEngine::Create(config, /*pp=*/1, o);
//   RETURN_IF_ERROR((*e)->InitRandom(1));
//   absl::StatusOr<StepResult> r = (*e)->TrainStep(data, train_options);

#ifndef CHUNKFLOW_WORKER_ENGINE_CUDA_CUDA_ENGINE_H_
#define CHUNKFLOW_WORKER_ENGINE_CUDA_CUDA_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/chunk_input.h"
#include "worker/engine/cuda/cuda_stage.h"
#include "worker/engine/cuda/device.h"
#include "worker/engine/engine.h"
#include "worker/engine/memory.h"
#include "worker/engine/model_config.h"
#include "worker/engine/params.h"

namespace chunkflow::engine::cuda {

struct CudaEngineOptions {
  int device = 0;
  Precision precision = Precision::kBf16;
  AttentionKernel attention = AttentionKernel::kAuto;
  // The allocator's limit in bytes (0: the device's memory).
  int64_t memory_budget_bytes = 0;
  int64_t head_rows = 1024;
  // Where the state store lives (CudaStageOptions::offload_state).
  StateOffload offload_state = StateOffload::kAuto;
  // CudaStageOptions::fused_elementwise.
  bool fused_elementwise = true;
};

class CudaEngine {
 public:
  // Errors: INVALID_ARGUMENT (bad config, pp, device or budget);
  // UNAVAILABLE (no CUDA device); RESOURCE_EXHAUSTED (the parameters do not
  // fit the budget).
  static absl::StatusOr<std::unique_ptr<CudaEngine>> Create(const ModelConfig& config, int32_t pp,
                                                            const CudaEngineOptions& options);
  ~CudaEngine();

  const ModelConfig& config() const { return config_; }
  int32_t pp() const { return static_cast<int32_t>(stages_.size()); }
  DeviceContext& device() { return *ctx_; }
  CudaStage& stage(int32_t s) { return *stages_[s]; }

  // As engine::Engine, then uploaded.
  absl::Status InitRandom(uint64_t seed);
  absl::Status LoadWeights(const std::string& path);
  // The host copy of a stage's parameters; after changing its values, call
  // UploadWeights.
  StageParams& stage_params(int32_t s) { return *params_[s]; }
  absl::Status UploadWeights();
  // As engine::Engine (the same files: the CPU engine and transformers load
  // them), from the device's weights and AdamW moments.
  absl::Status Save(const std::string& dir, const std::string& save_id = "");
  absl::Status LoadOptimizer(const std::string& path);

  // As engine::Engine; StepResult::peak_device_bytes is the allocator's
  // exact peak during the step.
  absl::StatusOr<StepResult> ComputeGradients(const StepData& data, int64_t chunk_size, int32_t k);
  absl::StatusOr<StepResult> TrainStep(const StepData& data, const TrainOptions& options);

  // Downloaded from the device (the owning stage; a tied embedding split
  // across stages: the first stage's copy). Errors: NOT_FOUND naming it.
  absl::StatusOr<std::vector<float>> Gradient(const std::string& name);
  absl::StatusOr<std::vector<float>> Value(const std::string& name);
  int64_t optimizer_step() const { return step_; }

 private:
  CudaEngine(const ModelConfig& config, std::unique_ptr<DeviceContext> ctx);
  absl::Status SumTiedGradients();

  ModelConfig config_;
  // Declared first: destroyed last, after every array of the stages.
  std::unique_ptr<DeviceContext> ctx_;
  std::vector<std::unique_ptr<StageParams>> params_;
  std::vector<std::unique_ptr<MemoryTracker>> mem_;
  std::vector<std::unique_ptr<CudaStage>> stages_;
  int64_t step_ = 0;
};

}  // namespace chunkflow::engine::cuda

#endif  // CHUNKFLOW_WORKER_ENGINE_CUDA_CUDA_ENGINE_H_
