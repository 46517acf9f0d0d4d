// What the step benchmarks (engine_bench on the CPU, cuda_step_bench on a
// GPU) share about their PyTorch baseline, tools/bench/torch_step.py: the
// model's arguments and the common fields of its JSON result line.
//
//   RunTorchBaseline(python, script, StrCat("--lengths=...", TorchStepModelArgs(cfg)), ...);
//   const TorchStepResult r = ParseTorchStepResult(base.line);

#ifndef CHUNKFLOW_WORKER_ENGINE_TORCH_STEP_ARGS_H_
#define CHUNKFLOW_WORKER_ENGINE_TORCH_STEP_ARGS_H_

#include <cstdint>
#include <string>

#include "worker/engine/model_config.h"

namespace chunkflow::engine {

// " --layers=N --hidden=N ... --eps=1e-6": the model's shape as torch_step.py
// takes it.
std::string TorchStepModelArgs(const ModelConfig& config);

struct TorchStepResult {
  double seconds = 0;  // median step
  int64_t tokens = 0;
  double loss = 0;
  std::string torch_version;
  std::string attention;  // torch's attention path
};
TorchStepResult ParseTorchStepResult(const std::string& line);

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_TORCH_STEP_ARGS_H_
