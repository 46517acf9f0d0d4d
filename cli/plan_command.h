// `chunkflowctl plan`: what ChunkFlow would do with a dataset, before any
// cluster exists.
//
// Takes global batches from the dataset's seeded cursor, plans each with
// ChunkFlow and with the baselines (plain packing, Megatron-style padding and
// packing, with and without full recompute), simulates every plan, and prints a
// side-by-side table (or JSON with ChunkFlow's whole plan). With `sweep` it
// first searches ChunkSize x K for the fastest pair whose simulated peak memory
// fits the budget on every stage.
//
//   PlanOptions opt;
//   opt.dataset = "synthetic:paper-eval:n=20000,seed=1";
//   opt.dp = 2; opt.pp = 4;
//   absl::Status s = RunPlanCommand(opt, std::cout, std::cerr);

#ifndef CHUNKFLOW_CLI_PLAN_COMMAND_H_
#define CHUNKFLOW_CLI_PLAN_COMMAND_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace chunkflow::cli {

struct PlanOptions {
  // Megatron prefix, .jsonl file, or synthetic:<mix>:n=..,seed=..,max=..
  std::string dataset = "synthetic:paper-eval:n=20000,seed=1";
  int64_t global_batch = 256;  // sequences per step
  int64_t steps = 4;           // steps planned (from the cursor's start)
  uint64_t seed = 1;           // cursor shuffle
  int64_t chunk_size = 8192;
  int32_t k = 1;
  int32_t dp = 2;
  int32_t pp = 4;
  std::string model = "qwen2.5-7b";  // preset name
  std::string model_config;          // HF config.json (or its directory); wins over model
  double device_tflops = 400;        // effective throughput per device
  double memory_budget_gib = 80;     // per device
  int64_t max_length = 0;            // baselines' packing length; 0 = longest document
  bool sweep = false;
  std::string format = "table";  // "table" or "json"
};

// Errors: INVALID_ARGUMENT naming the flag; NOT_FOUND for a missing dataset or
// model config; DATA_LOSS for a corrupt dataset. Progress goes to `progress`.
absl::Status RunPlanCommand(const PlanOptions& options, std::ostream& out,
                            std::ostream& progress);

}  // namespace chunkflow::cli

#endif  // CHUNKFLOW_CLI_PLAN_COMMAND_H_
