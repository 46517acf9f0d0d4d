// What runs one pipeline stage's ops: the CPU Stage (stage.h) and the CUDA
// stage (worker/engine/cuda/cuda_stage.h) implement it, so the op executor
// (pipeline.h), the engine and the worker's step runner drive either.
//
// Pointers passed to Forward / Backward are HOST memory of (rows, hidden)
// floats on every implementation; a device implementation copies them in and
// out (and offers device-pointer variants of its own for device transports).

#ifndef CHUNKFLOW_WORKER_ENGINE_STAGE_EXECUTOR_H_
#define CHUNKFLOW_WORKER_ENGINE_STAGE_EXECUTOR_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "worker/engine/chunk_input.h"

namespace chunkflow::engine {

enum class ForwardKind {
  kKeep,       // keep activations for the backward
  kDrop,       // keep only the stage input; a kRecompute comes before the backward
  kRecompute,  // forward again from the kept input, keeping activations
  kInference,  // keep nothing (eval); the caller clears the state afterwards
};

// Loss sums of one sequence (only rows with a target count).
struct SequenceLoss {
  double sum = 0;
  int64_t count = 0;
};

// The op-order checks every StageExecutor makes, so the CPU and CUDA
// stages refuse the same lists with the same errors. `held`: the stage holds
// something for in.id (a forward ran), `has_activations`: that it kept
// activations; `state_rows(seq)`: rows of seq in the stage's state store.
// Errors: FAILED_PRECONDITION naming the chunk (forwarded twice, a recompute
// without a dropping forward, a backward without activations, sequences
// forwarded out of order, K/V missing from the state).
absl::Status CheckForwardOrder(const ChunkInput& in, ForwardKind kind, bool held,
                               bool has_activations,
                               absl::FunctionRef<int64_t(int64_t)> state_rows);
absl::Status CheckBackwardOrder(const ChunkInput& in, bool held, bool has_activations,
                                absl::FunctionRef<int64_t(int64_t)> state_rows);

// The most chunks whose activations an op list keeps on its stage at once
// (forwards that keep them, recomputes included, less the backwards done),
// at least 1: the room a stage's working set needs.
int64_t MaxChunksHeld(const std::vector<planner::Op>& ops);

// What an op list does to a stage's state store, in order: a sequence's
// first forward reaches it (its state is allocated, `tokens` rows), and the
// backward of its first chunk (offset 0) frees it; and the most rows one of
// its chunks has. What CudaStage::PrepareStep replays before the step.
struct StateEvent {
  int64_t seq = 0;
  int64_t tokens = 0;  // the sequence's length in `data`
  bool freed = false;  // false: first reached
  // Reached: the rows of the chunk that reaches it, and how many chunks
  // hold activations then (as MaxChunksHeld counts them).
  int64_t rows = 0;
  int64_t held = 0;
};
struct StateTimeline {
  std::vector<StateEvent> events;
  int64_t chunk_rows = 1;
};
StateTimeline StateTimelineOf(const planner::Plan& plan, const std::vector<planner::Op>& ops,
                              const StepData& data);

class StageExecutor {
 public:
  virtual ~StageExecutor() = default;

  // x: (T, C) input (ignored on the first stage); y: (T, C) output (ignored
  // on the last). Errors: FAILED_PRECONDITION when the op order is wrong (a
  // chunk forwarded twice, a recompute without a kept input, K/V missing from
  // the state), naming the chunk; a device implementation adds its device
  // errors (RESOURCE_EXHAUSTED over the memory budget, INTERNAL naming the
  // kernel).
  virtual absl::Status Forward(const ChunkInput& in, const float* x, float* y,
                               ForwardKind kind) = 0;
  // dy: (T, C) gradient of the output (ignored on the last stage); dx: (T, C)
  // gradient of the input, overwritten (ignored on the first). Errors:
  // FAILED_PRECONDITION when the chunk has no activations.
  virtual absl::Status Backward(const ChunkInput& in, const float* dy, float* dx) = 0;

  // Each target's loss is multiplied by `scale` in the gradient: 1 / (targets
  // of the global batch), whatever the chunking.
  virtual void set_loss_scale(float scale) = 0;
  // Loss sums of the forwards so far (not counting recomputes), by sequence.
  virtual const std::map<int64_t, SequenceLoss>& losses() const = 0;
  virtual void ClearLosses() = 0;
  // Drops all activations and state (end of an eval pass, or an aborted step).
  virtual void Reset() = 0;

  virtual int64_t hidden_size() const = 0;
  // Chunks forwarded whose backward has not run, and sequences in the state
  // store (both 0 after a complete step).
  virtual int64_t live_chunks() const = 0;
  virtual int64_t live_sequences() const = 0;
};

// The attention segments of chunk `in` at stage-local layer `l`: one per
// piece, pointing at its sequence's K/V and their gradients in `state` (the
// CPU StateStore or the DeviceStateStore; Segment is the matching kernels'
// AttentionSegment).
template <typename Segment, typename Store>
std::vector<Segment> AttentionSegments(const ChunkInput& in, int64_t l, Store& state) {
  std::vector<Segment> segs;
  for (const PieceRows& p : in.pieces) {
    Segment sg;
    sg.q_begin = p.row;
    sg.length = p.length;
    sg.offset = p.offset;
    sg.k = state.k(p.seq, l);
    sg.v = state.v(p.seq, l);
    sg.dk = state.dk(p.seq, l);
    sg.dv = state.dv(p.seq, l);
    segs.push_back(sg);
  }
  return segs;
}

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_STAGE_EXECUTOR_H_
