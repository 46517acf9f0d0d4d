// The parameters of one pipeline stage: a contiguous layer range, with the
// embedding on the first stage and the final norm and LM head on the last.
//
// Weights, gradients and optimizer state are flat fp32 buffers laid out the
// same way; `tensors()` names every slice with its Hugging Face name and
// shape. With tied embeddings the head is the embedding matrix: on a
// one-stage model it is the same slice; when the embedding and the head sit
// on different stages, the last stage holds its own copy under the
// embedding's name and the trainer sums the two gradients before the update.
//
//   StageParams p(config, StageRange{0, config.num_hidden_layers, true, true});
//   p.InitRandom(/*seed=*/1);
//   StageView w = p.weights();   // w.layers[0].wq -> (H*D, C)

#ifndef CHUNKFLOW_WORKER_ENGINE_PARAMS_H_
#define CHUNKFLOW_WORKER_ENGINE_PARAMS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/model_config.h"
#include "worker/engine/safetensors.h"

namespace chunkflow::engine {

// Layers [first_layer, end_layer); `first`/`last`: holds the embedding /
// the final norm, head and loss.
struct StageRange {
  int64_t first_layer = 0;
  int64_t end_layer = 0;
  bool first = true;
  bool last = true;
};

// Cuts `layers` into `pp` contiguous ranges, earlier stages taking the extra
// layers. Errors: INVALID_ARGUMENT if pp < 1 or pp > layers.
absl::StatusOr<std::vector<StageRange>> PartitionStages(int64_t layers, int32_t pp);

struct ParamTensor {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
};

// Pointers into one flat buffer (weights, gradients or optimizer moments).
// Biases are null where the architecture has none.
struct LayerView {
  float* ln1;  // (C)
  float* wq;   // (H*D, C)
  float* bq;   // (H*D) or null
  float* wk;   // (Hk*D, C)
  float* bk;   // (Hk*D) or null
  float* wv;   // (Hk*D, C)
  float* bv;   // (Hk*D) or null
  float* wo;   // (C, H*D)
  float* ln2;  // (C)
  float* wg;   // (I, C)
  float* wu;   // (I, C)
  float* wd;   // (C, I)
};

struct StageView {
  float* embed = nullptr;       // (V, C), first stage
  std::vector<LayerView> layers;
  float* final_norm = nullptr;  // (C), last stage
  float* head = nullptr;        // (V, C), last stage (== embed when tied on one stage)
};

// Every tensor name of the whole model, in the Hugging Face convention.
std::vector<std::string> ModelTensorNames(const ModelConfig& config);

class StageParams {
 public:
  StageParams(const ModelConfig& config, StageRange range);

  const ModelConfig& config() const { return config_; }
  const StageRange& range() const { return range_; }
  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  const ParamTensor* Find(const std::string& name) const;
  int64_t numel() const { return numel_; }

  std::vector<float>& values() { return values_; }
  const std::vector<float>& values() const { return values_; }
  std::vector<float>& grads() { return grads_; }
  const std::vector<float>& grads() const { return grads_; }

  StageView weights() { return View(values_.data()); }
  StageView grad_view() { return View(grads_.data()); }
  void ZeroGrads();

  // Hugging Face's initialisation (normal(0, 0.02) matrices, zero biases,
  // unit norms), seeded per tensor name so any stage split of one model draws
  // the same values.
  void InitRandom(uint64_t seed);

  // Loads this stage's tensors. Every tensor of the checkpoint must belong to
  // the model (ModelTensorNames); every tensor of this stage must be present
  // with its shape. Loads into a copy and swaps on success: on error nothing
  // changed. Errors: INVALID_ARGUMENT / NOT_FOUND naming the tensor.
  absl::Status Load(const SafetensorsReader& reader);

 private:
  StageView View(float* base) const;
  void Add(const std::string& name, std::vector<int64_t> shape);

  ModelConfig config_;
  StageRange range_;
  std::vector<ParamTensor> tensors_;
  int64_t numel_ = 0;
  std::vector<float> values_;
  std::vector<float> grads_;
};

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_PARAMS_H_
