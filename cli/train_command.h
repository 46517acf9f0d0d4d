// `chunkflowctl train` and `chunkflowctl eval`: the engine in one process.
//
// train: takes global batches from the seeded dataset cursor, trains each with
// ChunkFlow (chunks of --chunk_size, K, `stages` pipeline stages in this
// process), prints a progress line per step and writes a Hugging Face
// checkpoint (config.json, model.safetensors, optimizer.safetensors) plus
// trainer_state.json (the cursor's next batch, dataset, seed, global batch):
// training again from that folder continues with the next batch.
// eval: the mean loss of each document, chunk by chunk, no gradients.
//
//   TrainCommandOptions o;
//   o.dataset = "synthetic:lmsys:n=1000,max=4096";
//   o.output_dir = "/tmp/ckpt";
//   absl::Status s = RunTrainCommand(o, std::cout, std::cerr);

#ifndef CHUNKFLOW_CLI_TRAIN_COMMAND_H_
#define CHUNKFLOW_CLI_TRAIN_COMMAND_H_

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "worker/engine/engine.h"

namespace chunkflow::cli {

// Where the model comes from: a Hugging Face folder (config.json and
// safetensors, and optimizer.safetensors when resuming), or a config.json
// with seeded random weights, or (neither) the tiny random Qwen2 preset.
struct ModelSource {
  std::string model_dir;
  std::string model_config;
  uint64_t seed = 1;
  int32_t stages = 1;
  bool load_optimizer = true;  // model_dir's optimizer.safetensors (train only)
};

struct TrainCommandOptions {
  ModelSource model;
  std::string dataset = "synthetic:lmsys:n=2000,seed=1,max=2048";
  int64_t steps = 10;
  int64_t global_batch = 16;
  uint64_t seed = 1;  // dataset cursor
  engine::TrainOptions train;
  std::string output_dir;  // empty: no checkpoint
  std::string device = "cpu";      // or "cuda": the CUDA engine on device 0
  std::string precision = "bf16";  // cuda: bf16 GEMMs (fp32 master weights) or fp32
  // cuda: where the K/V state lives: auto (the device while it fits, else
  // pinned host memory), never (the device), always (pinned host memory).
  std::string offload_state = "auto";
};

// Errors: INVALID_ARGUMENT naming the option (steps, global_batch, stages,
// chunk_size, k, lr, clip, optimizer), the model and dataset loaders' errors,
// the engine's (e.g. a token id outside the vocabulary, naming document and
// position). Nothing is written to output_dir unless every step succeeded.
absl::Status RunTrainCommand(const TrainCommandOptions& options, std::ostream& out,
                             std::ostream& progress);

struct EvalCommandOptions {
  ModelSource model;
  std::string dataset;
  int64_t chunk_size = 8192;
  int64_t max_documents = 0;  // 0: every document
  std::string format = "table";  // or "json"
};

absl::Status RunEvalCommand(const EvalCommandOptions& options, std::ostream& out,
                            std::ostream& progress);

}  // namespace chunkflow::cli

#endif  // CHUNKFLOW_CLI_TRAIN_COMMAND_H_
