// One pipeline stage of a Qwen2/Llama decoder: forward and backward of one
// chunk at a time against the stage's state store.
//
// Per layer (T rows, C hidden, H query heads and Hk kv heads of D dims, I
// intermediate):
//   h1 = rmsnorm(x); q,k,v = h1 W^T (+ b); rope(q, k); K/V rows -> state
//   a  = attention(q, state K/V of [0, offset + length)); x' = x + a Wo^T
//   h2 = rmsnorm(x'); y = x' + (silu(h2 Wg^T) * h2 Wu^T) Wd^T
// The first stage embeds token ids; the last applies the final norm and the
// LM head and sums the cross-entropy of every row with a target. The head is
// evaluated in row blocks, forward and again in the backward, so the (T, V)
// logits never exist at once.
//
// A forward keeping activations stores, per layer, x, rstd1, q, the attention
// output and lse, x', rstd2, gate and up (norm outputs and the SwiGLU product
// are recomputed in the backward). A dropping forward keeps only the stage
// input (nothing on the first stage: the token ids are its input); its
// recompute forward reads K/V from the state store instead of projecting them
// again. Backward: parameter gradients are accumulated into the stage's
// gradient buffer; dK/dV of earlier positions are accumulated in the state
// store; afterwards the chunk's rows of the state are freed.
//
//   Stage stage(&params, &mem);
//   stage.set_loss_scale(1.0f / data.TargetCount());
//   stage.Forward(in, x, y, ForwardKind::kKeep);
//   stage.Backward(in, dy, dx);

#ifndef CHUNKFLOW_WORKER_ENGINE_STAGE_H_
#define CHUNKFLOW_WORKER_ENGINE_STAGE_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cpu/attention.h"
#include "worker/engine/chunk_input.h"
#include "worker/engine/memory.h"
#include "worker/engine/params.h"
#include "worker/engine/stage_executor.h"
#include "worker/engine/state_store.h"

namespace chunkflow::engine {

class Stage : public StageExecutor {
 public:
  Stage(StageParams* params, MemoryTracker* mem);

  // The StageExecutor contract (stage_executor.h).
  absl::Status Forward(const ChunkInput& in, const float* x, float* y, ForwardKind kind) override;
  absl::Status Backward(const ChunkInput& in, const float* dy, float* dx) override;
  void set_loss_scale(float scale) override { loss_scale_ = scale; }
  const std::map<int64_t, SequenceLoss>& losses() const override { return losses_; }
  void ClearLosses() override { losses_.clear(); }
  void Reset() override;
  int64_t hidden_size() const override { return c_; }
  int64_t live_chunks() const override { return static_cast<int64_t>(acts_.size()); }
  int64_t live_sequences() const override { return state_.sequences(); }

  // When set, forwards on the last stage append each row's logits (V floats)
  // to `sink`, in row order (tests and golden comparisons).
  void set_logits_sink(std::vector<float>* sink) { logits_sink_ = sink; }
  StateStore& state() { return state_; }

 private:
  struct LayerActs {
    TrackedBuffer x, rstd1, q, att, lse, xmid, rstd2, gate, up;
  };
  struct ChunkActs {
    TrackedBuffer input;  // dropped forward on a stage > 0
    std::vector<LayerActs> layers;
    TrackedBuffer xfinal;  // last stage: the final norm and head are recomputed from it
    bool has_activations = false;
  };

  TrackedBuffer Buf(MemoryTracker::Kind kind, int64_t n);
  std::vector<kernels::cpu::AttentionSegment> Segments(const ChunkInput& in, int64_t l);
  void LayerForward(int64_t l, const ChunkInput& in, bool write_kv, MemoryTracker::Kind kind,
                    LayerActs& a, float* inout);
  void LayerBackward(int64_t l, const ChunkInput& in, const LayerActs& a, float* dx);
  void HeadLoss(const ChunkInput& in, const float* xfinal);
  void HeadBackward(const ChunkInput& in, const float* xfinal, float* dx);

  StageParams* params_;
  MemoryTracker* mem_;
  StateStore state_;
  int64_t c_, qd_, kvd_, inter_, vocab_;
  float loss_scale_ = 1.0f;
  std::map<int32_t, ChunkActs> acts_;
  std::map<int64_t, SequenceLoss> losses_;
  std::vector<float>* logits_sink_ = nullptr;
};

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_STAGE_H_
