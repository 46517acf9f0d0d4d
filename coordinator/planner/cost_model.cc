#include "coordinator/planner/cost_model.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace chunkflow::planner {

// ===========================================================================
// Model shapes
// ===========================================================================

int64_t ModelShape::LayerParams() const {
  const int64_t attn = hidden * hidden * 2 + hidden * kv_dim() * 2;  // q, o, k, v
  const int64_t mlp = 3 * hidden * intermediate;                      // gate, up, down
  return attn + mlp + 2 * hidden;
}

absl::Status ValidateModelShape(const ModelShape& m) {
  auto positive = [&](const char* field, int64_t v) -> absl::Status {
    if (v > 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("model ", m.name, ": ", field, " must be > 0, got ", v));
  };
  for (auto [field, v] : {std::pair<const char*, int64_t>{"hidden_size", m.hidden},
                          {"intermediate_size", m.intermediate},
                          {"num_hidden_layers", m.layers},
                          {"num_attention_heads", m.heads},
                          {"num_key_value_heads", m.kv_heads},
                          {"vocab_size", m.vocab}}) {
    if (absl::Status s = positive(field, v); !s.ok()) return s;
  }
  if (m.hidden % m.heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", m.name, ": hidden_size ", m.hidden, " is not divisible by num_attention_heads ",
        m.heads));
  }
  if (m.heads % m.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", m.name, ": num_attention_heads ", m.heads,
        " is not divisible by num_key_value_heads ", m.kv_heads));
  }
  return absl::OkStatus();
}

namespace {

struct Preset {
  const char* name;
  ModelShape shape;
};

// Published config.json values of the named models.
const std::vector<Preset>& Presets() {
  static const auto* presets = new std::vector<Preset>{
      {"tiny", {"tiny", 256, 688, 4, 4, 2, 1024, true}},
      {"qwen2.5-0.5b", {"qwen2.5-0.5b", 896, 4864, 24, 14, 2, 151936, true}},
      {"qwen2.5-7b", {"qwen2.5-7b", 3584, 18944, 28, 28, 4, 152064, false}},
      {"qwen2.5-14b", {"qwen2.5-14b", 5120, 13824, 48, 40, 8, 152064, false}},
      {"llama3-8b", {"llama3-8b", 4096, 14336, 32, 32, 8, 128256, false}},
  };
  return *presets;
}

}  // namespace

std::vector<std::string> ModelPresetNames() {
  std::vector<std::string> names;
  for (const Preset& p : Presets()) names.push_back(p.name);
  return names;
}

absl::StatusOr<ModelShape> ModelPreset(absl::string_view name) {
  for (const Preset& p : Presets()) {
    if (name == p.name) return p.shape;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown model preset '", name,
                                                 "'; known presets: ",
                                                 absl::StrJoin(ModelPresetNames(), ", ")));
}

absl::StatusOr<ModelShape> ModelShapeFromHfConfig(absl::string_view json_text,
                                                  absl::string_view source_name) {
  nlohmann::json j = nlohmann::json::parse(json_text.begin(), json_text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": not a JSON object; expected a Hugging Face config.json"));
  }
  ModelShape m;
  m.name = std::string(source_name);
  auto get = [&](const char* key, bool required, int64_t fallback,
                 int64_t* out) -> absl::Status {
    auto it = j.find(key);
    if (it == j.end()) {
      if (!required) {
        *out = fallback;
        return absl::OkStatus();
      }
      return absl::InvalidArgumentError(
          absl::StrCat(source_name, ": missing field '", key, "'"));
    }
    if (!it->is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(source_name, ": field '", key,
                                                     "' must be an integer, got ", it->dump()));
    }
    *out = it->get<int64_t>();
    return absl::OkStatus();
  };
  for (const auto& [key, required, out] :
       {std::tuple<const char*, bool, int64_t*>{"hidden_size", true, &m.hidden},
        {"intermediate_size", true, &m.intermediate},
        {"num_hidden_layers", true, &m.layers},
        {"num_attention_heads", true, &m.heads},
        {"vocab_size", true, &m.vocab}}) {
    if (absl::Status s = get(key, required, 0, out); !s.ok()) return s;
  }
  if (absl::Status s = get("num_key_value_heads", false, m.heads, &m.kv_heads); !s.ok()) {
    return s;
  }
  auto tied = j.find("tie_word_embeddings");
  m.tied_embeddings = tied != j.end() && tied->is_boolean() && tied->get<bool>();
  if (absl::Status s = ValidateModelShape(m); !s.ok()) return s;
  return m;
}

std::vector<int64_t> LayersPerStage(int64_t layers, int32_t pp) {
  if (pp < 1) return {};
  std::vector<int64_t> out(pp, layers / pp);
  for (int64_t i = 0; i < layers % pp; ++i) ++out[i];
  return out;
}

// ===========================================================================
// Cost model
// ===========================================================================

double CostModel::ForwardAllStagesSeconds(const Chunk& c) const {
  double total = 0;
  for (int32_t s = 0; s < static_cast<int32_t>(stages.size()); ++s) {
    total += ForwardSeconds(s, c);
  }
  return total;
}

CostModel CostModelFromShape(const ModelShape& m, int32_t pp, const DeviceModel& dev) {
  // Forward FLOPs: 2 per multiply-add. Per token and layer the GEMMs do
  // 2 * LayerParams; per (query, key) pair attention does QK^T and PV, 2 * 2 *
  // hidden. The LM head adds 2 * hidden * vocab per token on the last stage.
  CostModel cost;
  const std::vector<int64_t> layers = LayersPerStage(m.layers, pp);
  for (int32_t s = 0; s < pp; ++s) {
    StageCost sc;
    double linear = 2.0 * static_cast<double>(m.LayerParams()) * layers[s];
    if (s == pp - 1) linear += 2.0 * m.hidden * m.vocab;
    sc.linear_s_per_token = linear / dev.flops_per_s;
    sc.quadratic_s_per_pair = 4.0 * m.hidden * layers[s] / dev.flops_per_s;
    sc.fixed_s = dev.op_overhead_s;
    cost.stages.push_back(sc);
  }
  return cost;
}

absl::Status ValidateCostModel(const CostModel& cost, int32_t pp) {
  if (static_cast<int64_t>(cost.stages.size()) != pp) {
    return absl::InvalidArgumentError(
        absl::StrCat("cost model has ", cost.stages.size(), " stages, pp is ", pp));
  }
  auto ok = [](double v) { return std::isfinite(v) && v >= 0; };
  if (!ok(cost.backward_ratio)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cost model backward_ratio must be finite and >= 0, got ",
                     cost.backward_ratio));
  }
  for (int32_t s = 0; s < pp; ++s) {
    const StageCost& c = cost.stages[s];
    for (auto [field, v] : {std::pair<const char*, double>{"linear_s_per_token",
                                                           c.linear_s_per_token},
                            {"quadratic_s_per_pair", c.quadratic_s_per_pair},
                            {"fixed_s", c.fixed_s}}) {
      if (!ok(v)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "cost model stage ", s, " ", field, " must be finite and >= 0, got ", v));
      }
    }
  }
  return absl::OkStatus();
}

// ===========================================================================
// Memory model
// ===========================================================================

absl::Status ValidateMemoryModel(const MemoryModel& m, int32_t pp) {
  if (static_cast<int64_t>(m.static_bytes.size()) != pp) {
    return absl::InvalidArgumentError(absl::StrCat(
        "memory model static_bytes has ", m.static_bytes.size(), " entries, pp is ", pp));
  }
  for (int32_t s = 0; s < pp; ++s) {
    if (m.static_bytes[s] < 0) {
      return absl::InvalidArgumentError(absl::StrCat("memory model static_bytes[", s,
                                                     "] is negative: ", m.static_bytes[s]));
    }
  }
  for (auto [field, v] : {std::pair<const char*, const std::vector<double>*>{
                              "activation_bytes_per_token", &m.activation_bytes_per_token},
                          {"input_bytes_per_token", &m.input_bytes_per_token},
                          {"state_bytes_per_token", &m.state_bytes_per_token}}) {
    if (static_cast<int64_t>(v->size()) != pp) {
      return absl::InvalidArgumentError(absl::StrCat("memory model ", field, " has ",
                                                     v->size(), " entries, pp is ", pp));
    }
    for (int32_t s = 0; s < pp; ++s) {
      if (!std::isfinite((*v)[s]) || (*v)[s] < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "memory model ", field, "[", s, "] must be finite and >= 0, got ", (*v)[s]));
      }
    }
  }
  return absl::OkStatus();
}

MemoryModel MemoryModelFromShape(const ModelShape& m, int32_t pp) {
  // Saved for backward per token and layer, in bf16 elements: both norms'
  // inputs and outputs (4h), q (h), k and v (2 kv_dim), the attention output
  // (h), gate, up and their SwiGLU product (3i).
  const double act_layer = 2.0 * (6.0 * m.hidden + 2.0 * m.kv_dim() + 3.0 * m.intermediate);
  // The state store's fp32 K, V, dK and dV (worker/engine/state_store.h and
  // the CUDA engine's device store).
  const double state_layer = 4.0 * 4.0 * m.kv_dim();
  const std::vector<int64_t> layers = LayersPerStage(m.layers, pp);
  MemoryModel mem;
  for (int32_t s = 0; s < pp; ++s) {
    int64_t params = m.LayerParams() * layers[s];
    double act = act_layer * layers[s];
    if (s == 0) params += m.vocab * m.hidden;
    if (s == pp - 1) {
      params += m.hidden + ((m.tied_embeddings && pp == 1) ? 0 : m.vocab * m.hidden);
      act += 4.0 * m.vocab;  // fp32 logits (their gradient reuses the buffer)
    }
    mem.static_bytes.push_back(params * 18);
    mem.activation_bytes_per_token.push_back(act);
    mem.input_bytes_per_token.push_back(4.0 * m.hidden);  // fp32, as the engines keep it
    mem.state_bytes_per_token.push_back(state_layer * layers[s]);
  }
  return mem;
}

}  // namespace chunkflow::planner
