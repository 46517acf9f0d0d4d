// The training engine of one process: a Qwen2/Llama model cut into pipeline
// stages, trained chunk by chunk from planner op lists.
//
// A step plans the global batch (coordinator/planner: chunks of ChunkSize,
// state-aware schedule with K, 1F1B across stages), runs every stage's op
// list (LocalPipeline), sums tied-embedding gradients across stages, clips
// the global gradient norm and applies the optimizer. The loss of a step is
// the mean cross-entropy over every target of the global batch, whatever the
// chunking.
//
//   absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(config, /*pp=*/2);
//   (*e)->InitRandom(/*seed=*/1);                 // or (*e)->LoadWeights(dir)
//   TrainOptions opt; opt.chunk_size = 1024; opt.k = 2;
//   absl::StatusOr<StepResult> r = (*e)->TrainStep(data, opt);
//   (*e)->Save(out_dir);                          // HF config.json + safetensors

#ifndef CHUNKFLOW_WORKER_ENGINE_ENGINE_H_
#define CHUNKFLOW_WORKER_ENGINE_ENGINE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/plan.h"
#include "kernels/cpu/optimizer.h"
#include "worker/engine/chunk_input.h"
#include "worker/engine/memory.h"
#include "worker/engine/model_config.h"
#include "worker/engine/params.h"
#include "worker/engine/stage.h"

namespace chunkflow::engine {

enum class OptimizerKind { kAdamW, kSgd };

struct TrainOptions {
  int64_t chunk_size = 8192;  // tokens per chunk
  int32_t k = 1;              // chunks of a chain keeping activations
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  float lr = 1e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  // Decoupled weight decay of the matrices (embeddings and projections);
  // biases and norm weights are not decayed (Hugging Face Trainer's default).
  float weight_decay = 0.0f;
  float clip = 1.0f;  // max global gradient norm; 0 turns clipping off
};

struct StepResult {
  double loss = 0;          // mean over the batch's targets
  int64_t tokens = 0;       // tokens trained
  int64_t targets = 0;      // positions with a target
  int64_t chunks = 0;
  double grad_norm = 0;     // before clipping
  int64_t peak_bytes = 0;   // activations + state + scratch, max over stages
  int64_t peak_activation_bytes = 0;
  int64_t peak_state_bytes = 0;
  // CUDA engine: the device allocator's exact peak during the step, of
  // everything on the device (weights, gradients, optimizer state included).
  int64_t peak_device_bytes = 0;
  // CUDA engine: sequences whose state went to pinned host memory on some
  // stage (CudaStageOptions::offload_state).
  int64_t offloaded_sequences = 0;
  // CUDA engine: host memory for that state pinned during the ops, where the
  // step-start prediction (CudaStage::PrepareStep) missed it.
  int64_t pinned_mid_step_bytes = 0;
  double seconds = 0;
  std::map<int64_t, SequenceLoss> losses;  // by sequence
};

// The planner's view of a model (for its cost model).
planner::ModelShape ShapeOf(const ModelConfig& config);

// A step's loss (the last stage's sums over result->targets) and the
// stages' memory peaks into `result`.
struct StepResult;
void SummarizeStep(const std::map<int64_t, SequenceLoss>& losses,
                   const std::vector<std::unique_ptr<MemoryTracker>>& mem, StepResult* result);

// One process's plan of a global batch (dp 1): the planner's chunks and op
// lists, each chunk's rows, and the loss scale 1 / targets.
struct PlannedStep {
  planner::Plan plan;
  std::map<int32_t, ChunkInput> chunks;
  int64_t tokens = 0;
  int64_t targets = 0;
  float loss_scale = 0;
};
// Errors: bad data (MakeChunkInput), bad chunk_size/k (the planner).
absl::StatusOr<PlannedStep> PlanLocalStep(const ModelConfig& config, int32_t pp,
                                          const StepData& data, int64_t chunk_size, int32_t k);

// Building blocks shared with the distributed step runner (worker/agent).
// INVALID_ARGUMENT naming the option (lr, clip, betas, eps, weight_decay).
absl::Status ValidateTrainOptions(const TrainOptions& options);
// Sum of squared gradients of one stage (a tied embedding's copy on a last
// stage that is not also the first is left out: the first stage counts it).
double StageGradSquares(const StageParams& params);
// The factor torch's clip_grad_norm_ applies (1 when no clipping happens).
float ClipCoefficient(double grad_norm, float clip);

// OK for a finite gradient norm; otherwise INTERNAL saying the update was
// skipped (`loss` named where the caller knows it).
absl::Status CheckGradNorm(double grad_norm, std::optional<double> loss = std::nullopt);
// Loads a directory (or file) of safetensors with Hugging Face names into
// every stage's values; all or nothing (see StageParams::Load).
absl::Status LoadStageWeights(const std::string& path,
                              const std::vector<std::unique_ptr<StageParams>>& params);
// Writes config.json, model.safetensors (a tied embedding once) and
// optimizer.safetensors (AdamW moments per stage in the flat layout, and
// `step`) into `dir`, creating it and its parents: Engine::Save, for any
// engine's host copy. A non-empty `save_id` goes into both files' metadata
// (kSaveIdKey), so a reader can tell files of one save from a mix of two
// (an interrupted save in place).
absl::Status SaveModel(const std::string& dir, const ModelConfig& config,
                       const std::vector<std::unique_ptr<StageParams>>& params,
                       const std::vector<std::vector<float>>& m,
                       const std::vector<std::vector<float>>& v, int64_t step,
                       const std::string& save_id = "");
inline constexpr char kSaveIdKey[] = "chunkflow_save";
// The optimizer step count after one update: AdamW counts it (its bias
// correction); SGD does not, so an SGD checkpoint resumed with AdamW starts
// the count at its zero moments.
int64_t NextOptimizerStep(int64_t step, const TrainOptions& options);
// Reads what SaveModel wrote into optimizer.safetensors; on error nothing is
// changed. Errors: NOT_FOUND / INVALID_ARGUMENT naming the tensor or field.
absl::Status LoadOptimizerState(const std::string& path,
                                const std::vector<std::unique_ptr<StageParams>>& params,
                                std::vector<std::vector<float>>* m,
                                std::vector<std::vector<float>>* v, int64_t* step);
// One optimizer update of a stage; `step` is 1-based (AdamW bias correction).
void ApplyUpdate(StageParams& params, std::vector<float>& m, std::vector<float>& v, int64_t step,
                 const TrainOptions& options);

class Engine {
 public:
  // Errors: INVALID_ARGUMENT for a bad config (ValidateModelConfig) or pp
  // outside [1, layers].
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const ModelConfig& config, int32_t pp);

  const ModelConfig& config() const { return config_; }
  int32_t pp() const { return static_cast<int32_t>(stages_.size()); }
  StageParams& stage_params(int32_t s) { return *params_[s]; }

  void InitRandom(uint64_t seed);
  // A directory (or file) of safetensors with Hugging Face names; every
  // stage loads or none does. Errors: see StageParams::Load.
  absl::Status LoadWeights(const std::string& path);
  // Writes config.json, model.safetensors and optimizer.safetensors (the
  // AdamW moments and the step count) into `dir`, creating it (SaveModel).
  absl::Status Save(const std::string& dir, const std::string& save_id = "") const;

  // Reads the AdamW moments and step count Save wrote. Errors: NOT_FOUND /
  // INVALID_ARGUMENT naming the tensor (nothing changes on error).
  absl::Status LoadOptimizer(const std::string& path);

  // Forward and backward of the whole batch; gradients are left in the
  // stages' gradient buffers (tied embeddings summed). Errors: bad data
  // (MakeChunkInput), bad chunk_size/k (the planner), op-order errors.
  absl::StatusOr<StepResult> ComputeGradients(const StepData& data, int64_t chunk_size, int32_t k);
  // ComputeGradients, clipping and one optimizer update.
  absl::StatusOr<StepResult> TrainStep(const StepData& data, const TrainOptions& options);
  // Forward only, no gradients: per-sequence loss sums.
  absl::StatusOr<std::map<int64_t, SequenceLoss>> Evaluate(const StepData& data, int64_t chunk_size);

  // Logits (length, V) of one sequence, forwarded as one chunk.
  absl::StatusOr<std::vector<float>> Logits(const SequenceData& sequence);

  // The gradient / value of a named tensor (from the stage that owns it; for
  // a tied embedding split across stages, the first stage's copy).
  absl::StatusOr<std::vector<float>> Gradient(const std::string& name) const;
  absl::StatusOr<std::vector<float>> Value(const std::string& name) const;
  int64_t optimizer_step() const { return step_; }

 private:
  Engine(const ModelConfig& config, const std::vector<StageRange>& ranges);
  absl::StatusOr<std::vector<float>> Get(const std::string& name, bool grad) const;
  void SumTiedGradients();
  double GradNorm() const;
  void ApplyOptimizer(const TrainOptions& options);

  ModelConfig config_;
  std::vector<std::unique_ptr<StageParams>> params_;
  std::vector<std::unique_ptr<MemoryTracker>> mem_;
  std::vector<std::unique_ptr<Stage>> stages_;
  std::vector<std::vector<float>> m_, v_;  // AdamW moments per stage
  int64_t step_ = 0;
};

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_ENGINE_H_
