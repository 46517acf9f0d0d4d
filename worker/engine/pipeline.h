// Executes plan op lists on pipeline stages.
//
// RunOp runs one op of a (dp rank, stage) list on its Stage: what a worker
// daemon does for every op it is sent. LocalPipeline runs the lists of all
// stages of one dp rank inside one process, passing activations forward and
// gradients backward through in-memory mailboxes (the cluster's transport
// replaces them): a stage runs its next op as soon as the op's input has
// arrived, so any valid op order completes and a wrong one is reported.
//
//   std::vector<StageExecutor*> stages = {&s0, &s1};
//   LocalPipeline pipe(stages);
//   absl::Status s = pipe.Run({plan.ops(0, 0).ops, plan.ops(0, 1).ops}, inputs);

#ifndef CHUNKFLOW_WORKER_ENGINE_PIPELINE_H_
#define CHUNKFLOW_WORKER_ENGINE_PIPELINE_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/planner/plan.h"
#include "worker/engine/chunk_input.h"
#include "worker/engine/stage_executor.h"

namespace chunkflow::engine {

// in: the activation (forward) or output gradient (backward) received from
// the neighbouring stage, null where the stage has none (first stage's
// forward, last stage's backward, any recompute); out: (T, C) the activation
// or input gradient to send, ignored where nothing is sent.
absl::Status RunOp(StageExecutor& stage, const planner::Op& op, const ChunkInput& chunk, const float* in,
                   float* out);

class LocalPipeline {
 public:
  explicit LocalPipeline(std::vector<StageExecutor*> stages) : stages_(std::move(stages)) {}

  // ops[s] is stage s's op list; `chunks` holds every chunk those ops name.
  // Errors: the first stage error (with the stage and op); NOT_FOUND for an
  // op naming an unknown chunk; FAILED_PRECONDITION when no stage can run its
  // next op (the lists deadlock), naming each blocked op, or when a stage
  // never consumed what its neighbour sent.
  absl::Status Run(const std::vector<std::vector<planner::Op>>& ops,
                   const std::map<int32_t, ChunkInput>& chunks);

 private:
  std::vector<StageExecutor*> stages_;
};

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_PIPELINE_H_
