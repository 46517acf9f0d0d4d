#include "worker/engine/params.h"

#include <algorithm>
#include <random>
#include <set>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace chunkflow::engine {
namespace {

constexpr char kEmbed[] = "model.embed_tokens.weight";
constexpr char kNorm[] = "model.norm.weight";
constexpr char kHead[] = "lm_head.weight";

std::string LayerName(int64_t layer, const char* suffix) {
  return absl::StrCat("model.layers.", layer, ".", suffix);
}

// FNV-1a: a stable per-name seed (std::hash may differ between libraries).
uint64_t NameHash(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

absl::StatusOr<std::vector<StageRange>> PartitionStages(int64_t layers, int32_t pp) {
  if (pp < 1 || pp > layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pp ", pp, " must be between 1 and the model's num_hidden_layers (", layers, ")"));
  }
  std::vector<StageRange> out;
  int64_t begin = 0;
  for (int32_t s = 0; s < pp; ++s) {
    const int64_t n = layers / pp + (s < layers % pp ? 1 : 0);
    out.push_back(StageRange{begin, begin + n, s == 0, s == pp - 1});
    begin += n;
  }
  return out;
}

std::vector<std::string> ModelTensorNames(const ModelConfig& config) {
  StageParams all(config, StageRange{0, config.num_hidden_layers, true, true});
  std::vector<std::string> names;
  for (const ParamTensor& t : all.tensors()) names.push_back(t.name);
  return names;
}

StageParams::StageParams(const ModelConfig& config, StageRange range)
    : config_(config), range_(range) {
  const int64_t c = config.hidden_size, q = config.num_attention_heads * config.head_dim();
  const int64_t kv = config.kv_dim(), i = config.intermediate_size, v = config.vocab_size;
  const bool bias = config.attention_bias;
  if (range.first || (range.last && config.tie_word_embeddings)) Add(kEmbed, {v, c});
  for (int64_t l = range.first_layer; l < range.end_layer; ++l) {
    Add(LayerName(l, "input_layernorm.weight"), {c});
    Add(LayerName(l, "self_attn.q_proj.weight"), {q, c});
    if (bias) Add(LayerName(l, "self_attn.q_proj.bias"), {q});
    Add(LayerName(l, "self_attn.k_proj.weight"), {kv, c});
    if (bias) Add(LayerName(l, "self_attn.k_proj.bias"), {kv});
    Add(LayerName(l, "self_attn.v_proj.weight"), {kv, c});
    if (bias) Add(LayerName(l, "self_attn.v_proj.bias"), {kv});
    Add(LayerName(l, "self_attn.o_proj.weight"), {c, q});
    Add(LayerName(l, "post_attention_layernorm.weight"), {c});
    Add(LayerName(l, "mlp.gate_proj.weight"), {i, c});
    Add(LayerName(l, "mlp.up_proj.weight"), {i, c});
    Add(LayerName(l, "mlp.down_proj.weight"), {c, i});
  }
  if (range.last) {
    Add(kNorm, {c});
    if (!config.tie_word_embeddings) Add(kHead, {v, c});
  }
  values_.assign(static_cast<size_t>(numel_), 0.0f);
  grads_.assign(static_cast<size_t>(numel_), 0.0f);
}

void StageParams::Add(const std::string& name, std::vector<int64_t> shape) {
  ParamTensor t;
  t.name = name;
  t.numel = 1;
  for (int64_t d : shape) t.numel *= d;
  t.shape = std::move(shape);
  t.offset = numel_;
  numel_ += t.numel;
  tensors_.push_back(std::move(t));
}

const ParamTensor* StageParams::Find(const std::string& name) const {
  for (const ParamTensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

StageView StageParams::View(float* base) const {
  auto at = [&](const std::string& name) -> float* {
    const ParamTensor* t = Find(name);
    return t ? base + t->offset : nullptr;
  };
  StageView v;
  if (range_.first) v.embed = at(kEmbed);
  for (int64_t l = range_.first_layer; l < range_.end_layer; ++l) {
    LayerView lv;
    lv.ln1 = at(LayerName(l, "input_layernorm.weight"));
    lv.wq = at(LayerName(l, "self_attn.q_proj.weight"));
    lv.bq = at(LayerName(l, "self_attn.q_proj.bias"));
    lv.wk = at(LayerName(l, "self_attn.k_proj.weight"));
    lv.bk = at(LayerName(l, "self_attn.k_proj.bias"));
    lv.wv = at(LayerName(l, "self_attn.v_proj.weight"));
    lv.bv = at(LayerName(l, "self_attn.v_proj.bias"));
    lv.wo = at(LayerName(l, "self_attn.o_proj.weight"));
    lv.ln2 = at(LayerName(l, "post_attention_layernorm.weight"));
    lv.wg = at(LayerName(l, "mlp.gate_proj.weight"));
    lv.wu = at(LayerName(l, "mlp.up_proj.weight"));
    lv.wd = at(LayerName(l, "mlp.down_proj.weight"));
    v.layers.push_back(lv);
  }
  if (range_.last) {
    v.final_norm = at(kNorm);
    v.head = config_.tie_word_embeddings ? at(kEmbed) : at(kHead);
  }
  return v;
}

void StageParams::ZeroGrads() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

void StageParams::InitRandom(uint64_t seed) {
  for (const ParamTensor& t : tensors_) {
    float* p = values_.data() + t.offset;
    if (EndsWith(t.name, "layernorm.weight") || t.name == kNorm) {
      std::fill(p, p + t.numel, 1.0f);
    } else if (EndsWith(t.name, ".bias")) {
      std::fill(p, p + t.numel, 0.0f);
    } else {
      std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull ^ NameHash(t.name));
      std::normal_distribution<float> dist(0.0f, 0.02f);
      for (int64_t i = 0; i < t.numel; ++i) p[i] = dist(rng);
    }
  }
}

absl::Status StageParams::Load(const SafetensorsReader& reader) {
  const std::vector<std::string> model = ModelTensorNames(config_);
  const std::set<std::string> known(model.begin(), model.end());
  for (const std::string& name : reader.names()) {
    // What transformers itself skips on load: old checkpoints' RoPE buffers,
    // and an lm_head saved beside embeddings the config ties to it.
    if (EndsWith(name, ".rotary_emb.inv_freq") ||
        (config_.tie_word_embeddings && name == "lm_head.weight")) {
      continue;
    }
    if (!known.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint tensor '", name, "' does not belong to this ",
          config_.arch == Architecture::kQwen2 ? "Qwen2" : "Llama", " model (",
          config_.num_hidden_layers, " layers, tie_word_embeddings=",
          config_.tie_word_embeddings ? "true" : "false", "); check config.json"));
    }
  }
  std::vector<float> loaded(values_.size());
  for (const ParamTensor& t : tensors_) {
    if (absl::Status s = reader.ReadF32(t.name, t.shape, loaded.data() + t.offset); !s.ok()) {
      return s;
    }
  }
  values_.swap(loaded);
  return absl::OkStatus();
}

}  // namespace chunkflow::engine
