// Runs one worker's share of a training step: the op list of one (dp rank,
// pipeline stage), with activations and gradients moving to the neighbouring
// stages and gradients summed over the data-parallel group through
// communicators — what LocalPipeline does in one process, across processes.
//
// One thread drives every link. Sends are started (Communicator::StartSend)
// and stay in flight while the next ops compute and receive, so two
// neighbouring stages that both send at once (1F1B's steady state: one
// forwards, the other backwards) never wait on each other; each link carries
// one direction. NCCL requires the single thread (its communicators must not
// be driven from several threads at once).
// After the op list: dp all-reduce of the stage's gradients, the tied
// embedding's two copies summed (first and last stage), the global gradient
// norm over every rank, clipping and the optimizer update — the same update
// as Engine::TrainStep on one process.
//
// On a GPU (StepRunnerOptions::cuda_device >= 0) the stage is a CudaStage:
// weights, gradients and AdamW state stay on the device, the reduction and
// the update run there, and with device_links the communicators (NCCL) move
// device buffers directly; without, activations and gradients are staged
// through host memory for host transports (Gloo). The host StageParams stay
// the copy that is initialised, loaded and saved (ParamsChanged uploads it).
//
//   StageLinks links;                      // communicators, see below
//   StepRunner runner(config, range, &links);
//   runner.params().InitRandom(seed);      // or Load
//   absl::StatusOr<WorkerStepResult> r = runner.RunStep(plan, dp, data, targets, options);

#ifndef CHUNKFLOW_WORKER_AGENT_STEP_RUNNER_H_
#define CHUNKFLOW_WORKER_AGENT_STEP_RUNNER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/planner/plan.h"
#include "worker/comm/communicator.h"
#include "worker/engine/chunk_input.h"
#include "worker/engine/engine.h"
#include "worker/engine/memory.h"
#include "worker/engine/params.h"
#include "worker/engine/cuda/cuda_stage.h"
#include "worker/engine/cuda/device.h"
#include "worker/engine/stage.h"

namespace chunkflow::worker {

// The communicators of one (dp, stage). A link between stages s and s+1 is a
// 2-rank communicator: rank 0 the sender, rank 1 the receiver. Null where the
// stage has no such neighbour or group.
struct StageLinks {
  comm::Communicator* act_out = nullptr;   // activations to stage + 1 (we are rank 0)
  comm::Communicator* act_in = nullptr;    // activations from stage - 1 (we are rank 1)
  comm::Communicator* grad_out = nullptr;  // input gradients to stage - 1 (we are rank 0)
  comm::Communicator* grad_in = nullptr;   // output gradients from stage + 1 (we are rank 1)
  comm::Communicator* dp_group = nullptr;  // this stage's dp ranks (size dp; null if dp == 1)
  comm::Communicator* tied = nullptr;      // first and last stage of this dp rank (tied, pp > 1)
  comm::Communicator* world = nullptr;     // every rank (null if dp * pp == 1)
};

struct WorkerStepResult {
  double loss_sum = 0;      // last stage: summed loss of its rows with targets
  int64_t loss_count = 0;
  double grad_norm = 0;     // global, before clipping
  // Activations + state + scratch at their peak (the engine's accounting,
  // the same on CPU and GPU): what the coordinator replans on.
  int64_t peak_bytes = 0;
  // GPU: the device allocator's exact peak of everything it held (weights,
  // gradients, AdamW state included); 0 on the CPU.
  int64_t peak_device_bytes = 0;
  std::vector<double> op_seconds;  // per op of the list, for the cost model
  // GPU with device links and dp > 1: layer buckets whose dp all-reduce ran
  // during the last backward op (overlapped with it).
  int32_t overlapped_allreduces = 0;
  // GPU: sequences whose state this stage put in pinned host memory this
  // step (StepRunnerOptions::offload_state).
  int64_t offloaded_sequences = 0;
  // GPU: of that memory, the bytes pinned mid-step (with NCCL work in
  // flight) because the step-start prediction missed them; 0 normally.
  int64_t pinned_mid_step_bytes = 0;
};

struct StepRunnerOptions {
  // -1: the CPU engine; >= 0: the CUDA stage on this device.
  int cuda_device = -1;
  engine::cuda::Precision precision = engine::cuda::Precision::kBf16;
  // The device allocator's hard limit (0: the device's memory). Not the
  // job's memory budget: that one is a planning target (the coordinator
  // lowers K / ChunkSize when a reported peak passes it) and counts
  // activations, state and scratch only, as WorkerStepResult::peak_bytes.
  int64_t memory_budget_bytes = 0;
  // CUDA only: the links take device pointers (NCCL); false: host pointers
  // (Gloo), staged through host memory.
  bool device_links = true;
  // GPU: where the state store lives (CudaStageOptions::offload_state).
  engine::cuda::StateOffload offload_state = engine::cuda::StateOffload::kAuto;
};

class StepRunner {
 public:
  // The CPU runner.
  StepRunner(const engine::ModelConfig& config, engine::StageRange range, const StageLinks* links);
  // Either; the CUDA one allocates the stage's parameters on the device.
  // Errors (CUDA): UNAVAILABLE (no device), RESOURCE_EXHAUSTED (budget),
  // INVALID_ARGUMENT (bad device).
  static absl::StatusOr<std::unique_ptr<StepRunner>> Create(const engine::ModelConfig& config,
                                                            engine::StageRange range,
                                                            const StageLinks* links,
                                                            const StepRunnerOptions& options);
  ~StepRunner();

  // After changing params() on the host (InitRandom, Load): uploads them to
  // the device (nothing to do on the CPU).
  absl::Status ParamsChanged();
  bool on_device() const { return cuda_stage_ != nullptr; }
  // After a failed step on a GPU: non-empty (the CUDA error) when the device
  // is unusable for this process and the worker must restart.
  std::string DeviceLost() const { return ctx_ ? ctx_->Lost() : std::string(); }
  // Copies the device's weights and AdamW moments into params() and the
  // host moments (SaveShard does it itself; nothing to do on the CPU).
  absl::Status SyncToHost();

  engine::StageParams& params() { return params_; }
  int64_t optimizer_step() const { return step_; }
  // Bytes held now by kind, and the step's peak (what the worker reports).
  const engine::MemoryTracker& memory() const { return mem_; }

  // Checkpoint shards in the Hugging Face sharded layout, one file per stage:
  // `dir`/model-0000(s+1)-of-0000(pp).safetensors with this stage's weights (a
  // tied embedding only in stage 0's file) and `dir`/optimizer-stage-s.safetensors
  // with its AdamW moments and step. Stage 0 also writes config.json and
  // model.safetensors.index.json naming every tensor's file, so the directory
  // loads in transformers once every stage has saved. Creates `dir`.
  // Errors: UNAVAILABLE (cannot write), naming the path.
  absl::Status SaveShard(const std::string& dir, int32_t stage, int32_t pp);
  // Loads this stage's weights (through the index) and its optimizer shard.
  // On error nothing changed. Errors: NOT_FOUND / INVALID_ARGUMENT naming the
  // file or tensor.
  absl::Status LoadShard(const std::string& dir, int32_t stage);

  // `data` holds (at least) the sequences of this rank's chunks;
  // `global_targets` is the step's loss denominator (StepPlan.loss_tokens).
  // Errors: the engine's (bad data, op order), the communicators' (UNAVAILABLE,
  // DEADLINE_EXCEEDED, ...), INVALID_ARGUMENT for options or a plan that
  // does not have this (dp, stage).
  absl::StatusOr<WorkerStepResult> RunStep(const planner::Plan& plan, int32_t dp,
                                           const engine::StepData& data, int64_t global_targets,
                                           const engine::TrainOptions& options);

 private:
  // GPU, before a step's ops: how many chunks the op list holds at once,
  // and the pinned memory of the state it will offload.
  void PrepareDeviceStep(const planner::Plan& plan, const std::vector<planner::Op>& ops,
                         const engine::StepData& data);
  absl::Status RunOps(const planner::Plan& plan, int32_t dp, const engine::StepData& data,
                      WorkerStepResult* result);
  absl::Status ReduceAndUpdate(const engine::TrainOptions& options, WorkerStepResult* result);
  engine::StageExecutor& executor();
  // GPU with device links and dp > 1: the dp all-reduce runs per layer,
  // started from the last backward op (StartLayerAllReduce).
  bool OverlapsDpAllReduce() const;
  absl::Status StartLayerAllReduce(int64_t layer);

  engine::StageParams params_;
  engine::MemoryTracker mem_;
  engine::Stage stage_;
  const StageLinks* links_;
  StepRunnerOptions options_;
  // CUDA: the context outlives the stage (declared first, destroyed last).
  std::unique_ptr<engine::cuda::DeviceContext> ctx_;
  std::unique_ptr<engine::cuda::CudaStage> cuda_stage_;
  std::vector<float> m_, v_;
  int64_t step_ = 0;
  // Each stage-local layer's gradients as one contiguous (offset, count)
  // range of the flat buffer (count 0 where they are not contiguous).
  std::vector<std::pair<int64_t, int64_t>> layer_ranges_;
  // dp all-reduces started during the step's last backward (GPU with device
  // links), and the ranges they cover; ReduceAndUpdate finishes them and
  // reduces the rest.
  std::vector<std::unique_ptr<comm::PendingOp>> overlapped_;
  std::vector<std::pair<int64_t, int64_t>> overlapped_ranges_;
};

}  // namespace chunkflow::worker

#endif  // CHUNKFLOW_WORKER_AGENT_STEP_RUNNER_H_
