// Cost and memory models of a chunk on a pipeline stage.
//
// Time of a forward on stage s:
//   linear_s_per_token[s] * tokens + quadratic_s_per_pair[s] * attention_pairs
//   + fixed_s[s]
// where attention_pairs counts causal (query, key) pairs, attention to earlier
// chunks' K/V included (Piece::AttentionPairs). A backward costs
// backward_ratio times its forward; a recompute forward costs one forward.
//
// The coordinator starts from CostModelFromShape (FLOPs / device throughput)
// and later refits the coefficients from measured op times.
//
//   ModelShape m = Qwen25_7B();
//   CostModel cost = CostModelFromShape(m, /*pp=*/4, DeviceModel{});
//   MemoryModel mem = MemoryModelFromShape(m, /*pp=*/4);
//   double t = cost.ForwardSeconds(/*stage=*/0, chunk);

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_COST_MODEL_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_COST_MODEL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/planner/plan.h"

namespace chunkflow::planner {

// Shape of a decoder-only transformer of the Qwen2/Llama family.
struct ModelShape {
  std::string name = "custom";
  int64_t hidden = 0;
  int64_t intermediate = 0;
  int64_t layers = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t vocab = 0;
  bool tied_embeddings = false;

  int64_t head_dim() const { return heads > 0 ? hidden / heads : 0; }
  int64_t kv_dim() const { return head_dim() * kv_heads; }
  // Parameters of one decoder layer (q/k/v/o, gate/up/down, two norms).
  int64_t LayerParams() const;
};

// Checks every field, naming the first bad one.
absl::Status ValidateModelShape(const ModelShape& m);

// Presets: "qwen2.5-0.5b", "qwen2.5-7b", "qwen2.5-14b", "llama3-8b", "tiny".
absl::StatusOr<ModelShape> ModelPreset(absl::string_view name);
std::vector<std::string> ModelPresetNames();

// Reads the fields above from a Hugging Face config.json (Qwen2 or Llama).
absl::StatusOr<ModelShape> ModelShapeFromHfConfig(absl::string_view json_text,
                                                  absl::string_view source_name);

// Layers of each stage when `layers` are cut into `pp` contiguous ranges
// (earlier stages take the remainder). Requires 1 <= pp <= layers; empty for
// pp < 1.
std::vector<int64_t> LayersPerStage(int64_t layers, int32_t pp);

struct StageCost {
  double linear_s_per_token = 0;
  double quadratic_s_per_pair = 0;
  double fixed_s = 0;
};

struct CostModel {
  std::vector<StageCost> stages;
  double backward_ratio = 2.0;

  double ForwardSeconds(int32_t stage, const Chunk& c) const {
    const StageCost& s = stages[stage];
    return s.linear_s_per_token * static_cast<double>(c.compute_tokens) +
           s.quadratic_s_per_pair * static_cast<double>(c.compute_pairs) + s.fixed_s;
  }
  double BackwardSeconds(int32_t stage, const Chunk& c) const {
    return backward_ratio * ForwardSeconds(stage, c);
  }
  // Forward summed over stages.
  double ForwardAllStagesSeconds(const Chunk& c) const;
  // Forward + backward summed over stages.
  double ChunkSeconds(const Chunk& c) const {
    return ForwardAllStagesSeconds(c) * (1.0 + backward_ratio);
  }
};

// Effective device throughput and per-op overhead. 400 TFLOP/s is about 40% of
// an H100's dense bf16 peak, a realistic long-context training rate.
struct DeviceModel {
  double flops_per_s = 400e12;
  double op_overhead_s = 0;
};

CostModel CostModelFromShape(const ModelShape& m, int32_t pp, const DeviceModel& dev);

// One entry per stage, every coefficient finite and >= 0, backward_ratio
// finite and >= 0. Errors: INVALID_ARGUMENT naming the stage and field.
absl::Status ValidateCostModel(const CostModel& cost, int32_t pp);

// Bytes a chunk occupies on each stage, per token of the chunk.
struct MemoryModel {
  // Weights, gradients and optimizer state held for the whole step.
  std::vector<int64_t> static_bytes;
  // Activations kept for the backward (all layers of the stage; logits on the
  // last stage).
  std::vector<double> activation_bytes_per_token;
  // Stage input kept when activations are dropped (for the recompute).
  std::vector<double> input_bytes_per_token;
  // The state store (all layers of the stage): K, V and their gradients per
  // token of a sequence. As the engines do (worker/engine/state_store.h), a
  // sequence's state is reserved for its whole length at its first forward
  // on the stage, packed sequences included, and freed after the backward of
  // its first chunk.
  std::vector<double> state_bytes_per_token;
};

// bf16 activations, fp32 logits, fp32 stage inputs and state store (K, V,
// dK, dV: the engines' buffers); static memory is bf16 weights + fp32 master
// weights, gradients and AdamW moments (18 B/param), not sharded across dp.
MemoryModel MemoryModelFromShape(const ModelShape& m, int32_t pp);

// Every field has pp entries, finite and >= 0. Errors: INVALID_ARGUMENT naming
// the field.
absl::Status ValidateMemoryModel(const MemoryModel& memory, int32_t pp);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_COST_MODEL_H_
