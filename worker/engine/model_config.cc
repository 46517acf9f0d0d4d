#include "worker/engine/model_config.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace chunkflow::engine {

namespace {

using Json = nlohmann::json;

// Reads typed fields of one config object; every message names `source`.
class Fields {
 public:
  Fields(const Json& json, std::string source) : json_(json), source_(std::move(source)) {}

  // The field's value, or nullptr when it is absent or null.
  const Json* Get(const char* field) const {
    auto it = json_.find(field);
    return it == json_.end() || it->is_null() ? nullptr : &*it;
  }

  absl::StatusOr<int64_t> Int(const char* field, std::optional<int64_t> fallback) const {
    const Json* v = Get(field);
    if (v == nullptr) return Missing(field, fallback);
    if (v->is_number_integer() &&
        (!v->is_number_unsigned() ||
         v->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
      return v->get<int64_t>();
    }
    return WrongType(field, *v, "an integer");
  }

  absl::StatusOr<double> Double(const char* field, double fallback) const {
    const Json* v = Get(field);
    if (v == nullptr) return fallback;
    if (v->is_number()) return v->get<double>();
    return WrongType(field, *v, "a number");
  }

  absl::StatusOr<bool> Bool(const char* field, bool fallback) const {
    const Json* v = Get(field);
    if (v == nullptr) return fallback;
    if (v->is_boolean()) return v->get<bool>();
    return WrongType(field, *v, "true or false");
  }

  absl::StatusOr<std::string> String(const char* field, const std::string& fallback) const {
    const Json* v = Get(field);
    if (v == nullptr) return fallback;
    if (v->is_string()) return v->get<std::string>();
    return WrongType(field, *v, "a string");
  }

  absl::Status Error(const std::string& message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", message));
  }

  absl::Status WrongType(const char* field, const Json& v, const char* expected) const {
    return Error(absl::StrCat("field \"", field, "\" is ", v.dump(), " (", v.type_name(),
                              "), expected ", expected));
  }

  const std::string& source() const { return source_; }

 private:
  template <typename T>
  absl::StatusOr<T> Missing(const char* field, std::optional<T> fallback) const {
    if (fallback.has_value()) return *fallback;
    return Error(absl::StrCat("required field \"", field, "\" is missing or null"));
  }

  const Json& json_;
  std::string source_;
};

constexpr char kSupported[] =
    "supported: architectures [\"Qwen2ForCausalLM\"] or [\"LlamaForCausalLM\"], "
    "model_type \"qwen2\" or \"llama\"";

absl::StatusOr<Architecture> ParseArchitecture(const Fields& f) {
  if (const Json* archs = f.Get("architectures"); archs != nullptr) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return f.WrongType("architectures", *archs, "a non-empty array of strings");
    }
    const std::string name = (*archs)[0].get<std::string>();
    if (name == "Qwen2ForCausalLM") return Architecture::kQwen2;
    if (name == "LlamaForCausalLM") return Architecture::kLlama;
    return f.Error(absl::StrCat("architecture \"", name, "\" is unsupported; ", kSupported));
  }
  absl::StatusOr<std::string> type = f.String("model_type", "");
  if (!type.ok()) return type.status();
  if (*type == "qwen2") return Architecture::kQwen2;
  if (*type == "llama") return Architecture::kLlama;
  if (type->empty()) {
    return f.Error(absl::StrCat("neither \"architectures\" nor \"model_type\" is set; ",
                                kSupported));
  }
  return f.Error(absl::StrCat("model_type \"", *type, "\" is unsupported; ", kSupported));
}

// Fails when boolean `field` is true: the engine does not implement it.
absl::Status RejectIfTrue(const Fields& f, const char* field, const char* why) {
  absl::StatusOr<bool> v = f.Bool(field, false);
  if (!v.ok()) return v.status();
  if (*v) return f.Error(absl::StrCat("\"", field, "\": true is unsupported (", why, ")"));
  return absl::OkStatus();
}

// The features this engine does not implement, checked before the sizes.
absl::Status RejectUnsupported(const Fields& f, Architecture arch) {
  absl::StatusOr<std::string> act = f.String("hidden_act", "silu");
  if (!act.ok()) return act.status();
  if (*act != "silu") {
    return f.Error(absl::StrCat("hidden_act \"", *act, "\" is unsupported, expected \"silu\""));
  }
  if (const Json* scaling = f.Get("rope_scaling"); scaling != nullptr) {
    return f.Error(absl::StrCat("rope_scaling ", scaling->dump(),
                                " is unsupported, expected null or absent (plain RoPE only)"));
  }
  if (const Json* types = f.Get("layer_types"); types != nullptr) {
    if (!types->is_array()) return f.WrongType("layer_types", *types, "an array");
    for (const Json& t : *types) {
      if (t != "full_attention") {
        return f.Error(absl::StrCat("layer_types entry ", t.dump(),
                                    " is unsupported, expected \"full_attention\""));
      }
    }
  }
  if (arch == Architecture::kQwen2) {
    return RejectIfTrue(f, "use_sliding_window", "only full attention is implemented");
  }
  absl::Status s = RejectIfTrue(f, "mlp_bias", "the MLP projections have no bias");
  if (!s.ok()) return s;
  return RejectIfTrue(f, "attention_bias",
                      "Llama attention bias also biases o_proj; only Qwen2-style q/k/v bias is "
                      "implemented");
}

// transformers >= 5 writes {"rope_parameters": {"rope_theta": x, "rope_type":
// "default"}} instead of a top-level rope_theta (4.x writes only the latter).
// Either is accepted; when both are present they must agree.
absl::StatusOr<double> ParseRopeTheta(const Fields& f) {
  absl::StatusOr<double> top = f.Double("rope_theta", 10000.0);
  if (!top.ok()) return top.status();
  const Json* params = f.Get("rope_parameters");
  if (params == nullptr) return *top;
  if (!params->is_object()) return f.WrongType("rope_parameters", *params, "an object");
  for (auto it = params->begin(); it != params->end(); ++it) {
    const bool plain_type = it.key() == "rope_type" && it.value() == "default";
    if (!plain_type && it.key() != "rope_theta") {
      return f.Error(absl::StrCat("rope_parameters \"", it.key(), "\": ", it.value().dump(),
                                  " is unsupported, expected only \"rope_theta\" and "
                                  "\"rope_type\": \"default\" (plain RoPE only)"));
    }
  }
  const Fields rope(*params, absl::StrCat(f.source(), ": rope_parameters"));
  absl::StatusOr<double> theta = rope.Double("rope_theta", *top);
  if (!theta.ok()) return theta.status();
  if (f.Get("rope_theta") != nullptr && *theta != *top) {
    return f.Error(absl::StrCat("rope_theta ", *top, " disagrees with rope_parameters.rope_theta ",
                                *theta));
  }
  return *theta;
}

absl::Status ParseSizes(const Fields& f, ModelConfig* c) {
  struct IntField {
    const char* name;
    int64_t* dst;
    std::optional<int64_t> fallback;
  };
  const int64_t max_pos_default = c->arch == Architecture::kQwen2 ? 32768 : 2048;
  for (const IntField& field : {
           IntField{"hidden_size", &c->hidden_size, std::nullopt},
           IntField{"intermediate_size", &c->intermediate_size, std::nullopt},
           IntField{"num_attention_heads", &c->num_attention_heads, std::nullopt},
           IntField{"num_hidden_layers", &c->num_hidden_layers, std::nullopt},
           IntField{"vocab_size", &c->vocab_size, std::nullopt},
           IntField{"max_position_embeddings", &c->max_position_embeddings, max_pos_default},
       }) {
    absl::StatusOr<int64_t> v = f.Int(field.name, field.fallback);
    if (!v.ok()) return v.status();
    *field.dst = *v;
  }
  absl::StatusOr<int64_t> kv = f.Int("num_key_value_heads", c->num_attention_heads);
  if (!kv.ok()) return kv.status();
  c->num_key_value_heads = *kv;
  absl::StatusOr<double> eps = f.Double("rms_norm_eps", 1e-6);
  if (!eps.ok()) return eps.status();
  c->rms_norm_eps = *eps;
  absl::StatusOr<double> theta = ParseRopeTheta(f);
  if (!theta.ok()) return theta.status();
  c->rope_theta = *theta;
  absl::StatusOr<bool> tie = f.Bool("tie_word_embeddings", false);
  if (!tie.ok()) return tie.status();
  c->tie_word_embeddings = *tie;
  c->attention_bias = c->arch == Architecture::kQwen2;
  return absl::OkStatus();
}

absl::Status CheckHeadDim(const Fields& f, const ModelConfig& c) {
  absl::StatusOr<int64_t> head_dim = f.Int("head_dim", c.head_dim());
  if (!head_dim.ok()) return head_dim.status();
  if (*head_dim != c.head_dim()) {
    return f.Error(absl::StrCat("head_dim ", *head_dim,
                                " is unsupported, expected hidden_size / num_attention_heads = ",
                                c.hidden_size, " / ", c.num_attention_heads, " = ", c.head_dim()));
  }
  return absl::OkStatus();
}

}  // namespace

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

const char* ArchitectureName(Architecture arch) {
  return arch == Architecture::kQwen2 ? "qwen2" : "llama";
}

absl::StatusOr<ModelConfig> ParseHfConfig(std::string_view json_text, std::string_view source) {
  Json json;
  try {
    json = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": not valid JSON: ", e.what()));
  }
  const Fields f(json, std::string(source));
  if (!json.is_object()) {
    return f.Error(absl::StrCat("the config is a ", json.type_name(), ", expected an object"));
  }
  // The checks only call non-throwing accessors after testing types; the
  // catch is a backstop so no nlohmann exception can escape.
  try {
    ModelConfig c;
    absl::StatusOr<Architecture> arch = ParseArchitecture(f);
    if (!arch.ok()) return arch.status();
    c.arch = *arch;
    absl::Status s = RejectUnsupported(f, c.arch);
    if (s.ok()) s = ParseSizes(f, &c);
    if (s.ok()) {
      s = ValidateModelConfig(c);
      if (!s.ok()) return f.Error(std::string(s.message()));
    }
    if (s.ok()) s = CheckHeadDim(f, c);
    if (!s.ok()) return s;
    c.source_json = json.dump();
    return c;
  } catch (const Json::exception& e) {
    return f.Error(absl::StrCat("unexpected JSON content: ", e.what()));
  }
}

absl::StatusOr<ModelConfig> LoadHfConfig(const std::string& path) {
  std::string file = path;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) file = path + "/config.json";
  if (::stat(file.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("no model config at ", file, ": ",
                                            std::strerror(errno)));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in.is_open()) return absl::InternalError(absl::StrCat("cannot open ", file));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("cannot read ", file));
  return ParseHfConfig(text.str(), file);
}

// ---------------------------------------------------------------------------
// Writing and validation
// ---------------------------------------------------------------------------

std::string ToHfConfigJson(const ModelConfig& c) {
  // std::map-backed: keys come out sorted, as transformers writes them. The
  // source config's fields first; every field below is the engine's and
  // replaces the source's.
  Json j = Json::object();
  if (!c.source_json.empty()) {
    Json src = Json::parse(c.source_json, nullptr, /*allow_exceptions=*/false);
    if (src.is_object()) j = std::move(src);
  }
  const bool qwen = c.arch == Architecture::kQwen2;
  j["architectures"] = {qwen ? "Qwen2ForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = ArchitectureName(c.arch);
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = "float32";
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  if (qwen) {
    // Unused while use_sliding_window is false; set so no version of
    // transformers falls back to a smaller default window.
    j["use_sliding_window"] = false;
    j["sliding_window"] = c.max_position_embeddings;
    j["max_window_layers"] = c.num_hidden_layers;
  } else {
    j["attention_bias"] = false;
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
    j["head_dim"] = c.num_attention_heads > 0 ? c.head_dim() : 0;
  }
  return j.dump(2) + "\n";
}

absl::Status ValidateModelConfig(const ModelConfig& c) {
  for (const auto& [name, value] : {
           std::pair<const char*, int64_t>{"hidden_size", c.hidden_size},
           {"intermediate_size", c.intermediate_size},
           {"num_attention_heads", c.num_attention_heads},
           {"num_key_value_heads", c.num_key_value_heads},
           {"num_hidden_layers", c.num_hidden_layers},
           {"vocab_size", c.vocab_size},
           {"max_position_embeddings", c.max_position_embeddings},
       }) {
    if (value < 1) {
      return absl::InvalidArgumentError(absl::StrCat(name, " is ", value, ", expected >= 1"));
    }
  }
  if (c.hidden_size % c.num_attention_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hidden_size ", c.hidden_size,
                                                   " is not divisible by num_attention_heads ",
                                                   c.num_attention_heads));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_attention_heads ", c.num_attention_heads, " is not divisible by num_key_value_heads ",
        c.num_key_value_heads, " (grouped-query attention needs whole groups)"));
  }
  if (c.head_dim() % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "head_dim ", c.head_dim(), " (hidden_size ", c.hidden_size, " / num_attention_heads ",
        c.num_attention_heads, ") is odd, expected even (RoPE rotates pairs)"));
  }
  if (!(c.rms_norm_eps > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("rms_norm_eps is ", c.rms_norm_eps,
                                                   ", expected > 0"));
  }
  if (!(c.rope_theta > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("rope_theta is ", c.rope_theta,
                                                   ", expected > 0"));
  }
  const bool want_bias = c.arch == Architecture::kQwen2;
  if (c.attention_bias != want_bias) {
    return absl::InvalidArgumentError(absl::StrCat(
        "attention_bias is ", c.attention_bias ? "true" : "false", " for ",
        ArchitectureName(c.arch), ", expected ", want_bias ? "true" : "false",
        " (Qwen2 always has q/k/v bias; Llama attention bias is unsupported)"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Presets
// ---------------------------------------------------------------------------

ModelConfig TinyQwen2Config() {
  ModelConfig c;
  c.arch = Architecture::kQwen2;
  c.hidden_size = 64;
  c.intermediate_size = 176;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.num_hidden_layers = 2;
  c.vocab_size = 256;
  c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.attention_bias = true;
  c.tie_word_embeddings = true;
  return c;
}

ModelConfig TinyLlamaConfig() {
  ModelConfig c = TinyQwen2Config();
  c.arch = Architecture::kLlama;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.attention_bias = false;
  c.tie_word_embeddings = false;
  return c;
}

ModelConfig Qwen25_0_5BConfig() {
  ModelConfig c;
  c.arch = Architecture::kQwen2;
  c.hidden_size = 896;
  c.intermediate_size = 4864;
  c.num_attention_heads = 14;
  c.num_key_value_heads = 2;
  c.num_hidden_layers = 24;
  c.vocab_size = 151936;
  c.max_position_embeddings = 32768;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.attention_bias = true;
  c.tie_word_embeddings = true;
  return c;
}

}  // namespace chunkflow::engine
