#include "worker/engine/model_config.h"

#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace chunkflow::engine {
namespace {

using ::testing::HasSubstr;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

// Qwen/Qwen2.5-0.5B's config.json as published.
constexpr char kQwen25_05B[] = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 21,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// Meta-Llama-3-8B's config.json.
constexpr char kLlama3_8B[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

// What transformers 5.24 save_pretrained writes for TinyQwen2Config: rope
// theta inside "rope_parameters", per-layer "layer_types", "dtype".
constexpr char kQwen2SavedByTransformers5[] = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": null,
  "dtype": "float32",
  "eos_token_id": null,
  "hidden_act": "silu",
  "hidden_size": 64,
  "initializer_range": 0.02,
  "intermediate_size": 176,
  "layer_types": ["full_attention", "full_attention"],
  "max_position_embeddings": 2048,
  "max_window_layers": 2,
  "model_type": "qwen2",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "num_key_value_heads": 2,
  "pad_token_id": null,
  "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
  "sliding_window": null,
  "tie_word_embeddings": true,
  "transformers_version": "5.24.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 256
})";

// `base` with `patch` merged in (RFC 7386: a null value removes the field).
std::string Patched(const char* base, const char* patch) {
  nlohmann::json j = nlohmann::json::parse(base);
  j.merge_patch(nlohmann::json::parse(patch));
  return j.dump();
}

void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& needles) {
  EXPECT_EQ(status.code(), code) << status;
  for (const std::string& needle : needles) {
    EXPECT_THAT(std::string(status.message()), HasSubstr(needle));
  }
}

void ExpectInvalid(const std::string& json, const std::vector<std::string>& needles) {
  std::vector<std::string> all = needles;
  all.push_back("cfg.json");  // every message names the source
  ExpectError(ParseHfConfig(json, "cfg.json").status(), absl::StatusCode::kInvalidArgument, all);
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
}

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::string base = dir != nullptr ? dir : ::testing::TempDir();
  if (!base.empty() && base.back() == '/') base.pop_back();
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return absl::StrCat(base, "/", info->name(), "_", name);
}

// ---------------------------------------------------------------------------
// Real configs
// ---------------------------------------------------------------------------

TEST(ParseHfConfigTest, Qwen25_05B_ParsesEveryField) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(kQwen25_05B, "qwen/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kQwen2);
  EXPECT_EQ(c->hidden_size, 896);
  EXPECT_EQ(c->intermediate_size, 4864);
  EXPECT_EQ(c->num_attention_heads, 14);
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->num_hidden_layers, 24);
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_EQ(c->max_position_embeddings, 32768);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 1e6);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->head_dim(), 64);
  EXPECT_EQ(c->kv_dim(), 128);
  ExpectSameConfig(*c, Qwen25_0_5BConfig());
}

TEST(ParseHfConfigTest, Llama3_8B_ParsesEveryField) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(kLlama3_8B, "llama/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kLlama);
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 14336);
  EXPECT_EQ(c->num_attention_heads, 32);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->num_hidden_layers, 32);
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->max_position_embeddings, 8192);
  EXPECT_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->head_dim(), 128);
  EXPECT_EQ(c->kv_dim(), 1024);
}

TEST(ParseHfConfigTest, Transformers5RopeParameters_ParsesTheta) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(kQwen2SavedByTransformers5, "v5.json");
  ASSERT_TRUE(c.ok()) << c.status();
  ExpectSameConfig(*c, TinyQwen2Config());  // rope_theta 1e6, not the 10000 default
  ExpectInvalid(Patched(kQwen2SavedByTransformers5,
                        R"({"rope_parameters": {"rope_type": "linear", "factor": 2.0}})"),
                {"rope_parameters", "unsupported"});
  ExpectInvalid(Patched(kQwen2SavedByTransformers5, R"({"rope_parameters": {"factor": 2.0}})"),
                {"rope_parameters \"factor\": 2.0 is unsupported"});
  ExpectInvalid(Patched(kQwen2SavedByTransformers5, R"({"rope_theta": 10000.0})"),
                {"rope_theta 10000 disagrees with rope_parameters.rope_theta 1e+06"});
  ExpectInvalid(Patched(kQwen2SavedByTransformers5, R"({"rope_parameters": 5})"),
                {"\"rope_parameters\"", "expected an object"});
  ExpectInvalid(Patched(kQwen2SavedByTransformers5,
                        R"({"layer_types": ["full_attention", "sliding_attention"]})"),
                {"layer_types entry \"sliding_attention\" is unsupported"});
}

TEST(ParseHfConfigTest, OptionalFieldsAbsent_TakeHfDefaults) {
  absl::StatusOr<ModelConfig> c = ParseHfConfig(
      R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
          "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 10,
          "num_key_value_heads": null, "head_dim": 16})",
      "min.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->arch, Architecture::kLlama);
  EXPECT_EQ(c->num_key_value_heads, 4);  // = num_attention_heads
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_FALSE(c->tie_word_embeddings);
  absl::StatusOr<ModelConfig> q = ParseHfConfig(
      Patched(kQwen25_05B, R"({"architectures": null, "max_position_embeddings": null,
                               "tie_word_embeddings": null})"),
      "q.json");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->arch, Architecture::kQwen2);  // from model_type
  EXPECT_EQ(q->max_position_embeddings, 32768);
  EXPECT_FALSE(q->tie_word_embeddings);
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

TEST(ToHfConfigJsonTest, EveryPreset_RoundTripsThroughParse) {
  for (const ModelConfig& c : {TinyQwen2Config(), TinyLlamaConfig(), Qwen25_0_5BConfig()}) {
    ASSERT_TRUE(ValidateModelConfig(c).ok()) << ValidateModelConfig(c);
    const std::string json = ToHfConfigJson(c);
    absl::StatusOr<ModelConfig> back = ParseHfConfig(json, "roundtrip");
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
    ExpectSameConfig(*back, c);
  }
  absl::StatusOr<ModelConfig> llama = ParseHfConfig(kLlama3_8B, "llama");
  ASSERT_TRUE(llama.ok());
  absl::StatusOr<ModelConfig> back = ParseHfConfig(ToHfConfigJson(*llama), "llama2");
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameConfig(*back, *llama);
}

TEST(ToHfConfigJsonTest, Qwen2_WritesTheFieldsTransformersNeeds) {
  const nlohmann::json j = nlohmann::json::parse(ToHfConfigJson(TinyQwen2Config()));
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"Qwen2ForCausalLM"}));
  EXPECT_EQ(j["model_type"], "qwen2");
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["torch_dtype"], "float32");
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_TRUE(j["rope_scaling"].is_null());
  EXPECT_EQ(j["attention_dropout"], 0.0);
  EXPECT_EQ(j["use_sliding_window"], false);
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_EQ(j["rope_theta"], 1e6);
  EXPECT_FALSE(j.contains("bos_token_id"));
  EXPECT_FALSE(j.contains("eos_token_id"));
}

TEST(ToHfConfigJsonTest, Llama_WritesNoBiasAndPretrainingTp) {
  const nlohmann::json j = nlohmann::json::parse(ToHfConfigJson(TinyLlamaConfig()));
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["attention_bias"], false);
  EXPECT_EQ(j["mlp_bias"], false);
  EXPECT_EQ(j["pretraining_tp"], 1);
  EXPECT_EQ(j["head_dim"], 16);
  EXPECT_FALSE(j.contains("use_sliding_window"));
}

TEST(LoadHfConfigTest, FileOrDirectory_Loads) {
  const std::string dir = TempPath("model");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  std::ofstream(dir + "/config.json") << kQwen25_05B;
  absl::StatusOr<ModelConfig> from_dir = LoadHfConfig(dir);
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  EXPECT_EQ(from_dir->hidden_size, 896);
  absl::StatusOr<ModelConfig> from_file = LoadHfConfig(dir + "/config.json");
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ(from_file->vocab_size, 151936);
}

TEST(LoadHfConfigTest, MissingFile_IsNotFound) {
  const std::string dir = TempPath("empty");
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  ExpectError(LoadHfConfig(dir).status(), absl::StatusCode::kNotFound, {dir + "/config.json"});
  ExpectError(LoadHfConfig(dir + "/nope.json").status(), absl::StatusCode::kNotFound,
              {"nope.json"});
}

TEST(LoadHfConfigTest, BadContent_NamesTheFile) {
  const std::string path = TempPath("config.json");
  std::ofstream(path) << Patched(kQwen25_05B, R"({"hidden_act": "gelu"})");
  ExpectError(LoadHfConfig(path).status(), absl::StatusCode::kInvalidArgument, {path, "gelu"});
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

TEST(ParseHfConfigTest, BadJson_IsInvalidArgument) {
  ExpectInvalid("{\"hidden_size\": ", {"not valid JSON"});
  ExpectInvalid("[1, 2]", {"expected an object"});
}

TEST(ParseHfConfigTest, UnsupportedArchitecture_ListsSupportedOnes) {
  ExpectInvalid(Patched(kQwen25_05B, R"({"architectures": ["MistralForCausalLM"]})"),
                {"\"MistralForCausalLM\"", "Qwen2ForCausalLM", "LlamaForCausalLM"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"architectures": null, "model_type": "gemma"})"),
                {"model_type \"gemma\"", "\"qwen2\"", "\"llama\""});
  ExpectInvalid(Patched(kQwen25_05B, R"({"architectures": null, "model_type": null})"),
                {"neither \"architectures\" nor \"model_type\""});
  ExpectInvalid(Patched(kQwen25_05B, R"({"architectures": "Qwen2ForCausalLM"})"),
                {"\"architectures\"", "array"});
}

TEST(ParseHfConfigTest, UnsupportedFeatures_AreNamed) {
  ExpectInvalid(Patched(kQwen25_05B, R"({"hidden_act": "gelu"})"),
                {"hidden_act \"gelu\"", "expected \"silu\""});
  ExpectInvalid(Patched(kLlama3_8B, R"({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})"),
                {"rope_scaling", "llama3", "unsupported"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"use_sliding_window": true})"),
                {"\"use_sliding_window\": true is unsupported"});
  ExpectInvalid(Patched(kLlama3_8B, R"({"mlp_bias": true})"), {"\"mlp_bias\": true"});
  ExpectInvalid(Patched(kLlama3_8B, R"({"attention_bias": true})"),
                {"\"attention_bias\": true", "o_proj"});
  ExpectInvalid(Patched(kLlama3_8B, R"({"head_dim": 64})"),
                {"head_dim 64", "4096 / 32 = 128"});
}

TEST(ParseHfConfigTest, MissingRequiredField_NamesIt) {
  for (const char* field : {"hidden_size", "intermediate_size", "num_attention_heads",
                            "num_hidden_layers", "vocab_size"}) {
    ExpectInvalid(Patched(kQwen25_05B, absl::StrCat("{\"", field, "\": null}").c_str()),
                  {absl::StrCat("required field \"", field, "\" is missing")});
  }
}

TEST(ParseHfConfigTest, WrongJsonType_NamesTheField) {
  ExpectInvalid(Patched(kQwen25_05B, R"({"hidden_size": "896"})"),
                {"\"hidden_size\"", "\"896\"", "expected an integer"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"hidden_size": 896.5})"),
                {"\"hidden_size\"", "896.5", "expected an integer"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"rope_theta": "1e6"})"),
                {"\"rope_theta\"", "expected a number"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"tie_word_embeddings": 1})"),
                {"\"tie_word_embeddings\"", "expected true or false"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"hidden_act": 3})"),
                {"\"hidden_act\"", "expected a string"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"use_sliding_window": "no"})"),
                {"\"use_sliding_window\"", "expected true or false"});
}

TEST(ParseHfConfigTest, InconsistentSizes_FailValidation) {
  ExpectInvalid(Patched(kQwen25_05B, R"({"hidden_size": 100, "num_attention_heads": 3})"),
                {"hidden_size 100 is not divisible by num_attention_heads 3"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"num_key_value_heads": 4})"),
                {"num_attention_heads 14 is not divisible by num_key_value_heads 4"});
  ExpectInvalid(Patched(kQwen25_05B, R"({"vocab_size": 0})"), {"vocab_size is 0"});
}

TEST(ValidateModelConfigTest, EachBadField_IsInvalidArgument) {
  struct Case {
    void (*mutate)(ModelConfig*);
    const char* needle;
  };
  const std::vector<Case> cases = {
      {[](ModelConfig* c) { c->hidden_size = 0; }, "hidden_size is 0, expected >= 1"},
      {[](ModelConfig* c) { c->num_hidden_layers = -1; }, "num_hidden_layers is -1"},
      {[](ModelConfig* c) { c->num_key_value_heads = 0; }, "num_key_value_heads is 0"},
      {[](ModelConfig* c) { c->intermediate_size = 0; }, "intermediate_size is 0"},
      {[](ModelConfig* c) { c->hidden_size = 100, c->num_attention_heads = 3; },
       "hidden_size 100 is not divisible by num_attention_heads 3"},
      {[](ModelConfig* c) { c->num_key_value_heads = 3; },
       "num_attention_heads 4 is not divisible by num_key_value_heads 3"},
      {[](ModelConfig* c) { c->hidden_size = 12, c->num_key_value_heads = 4; },
       "head_dim 3 (hidden_size 12 / num_attention_heads 4) is odd"},
      {[](ModelConfig* c) { c->rms_norm_eps = 0; }, "rms_norm_eps is 0, expected > 0"},
      {[](ModelConfig* c) { c->rope_theta = -1; }, "rope_theta is -1, expected > 0"},
      {[](ModelConfig* c) { c->attention_bias = false; }, "attention_bias is false for qwen2"},
      {[](ModelConfig* c) { c->arch = Architecture::kLlama; }, "attention_bias is true for llama"},
  };
  for (const Case& k : cases) {
    ModelConfig c = TinyQwen2Config();
    k.mutate(&c);
    ExpectError(ValidateModelConfig(c), absl::StatusCode::kInvalidArgument, {k.needle});
  }
  EXPECT_TRUE(ValidateModelConfig(TinyQwen2Config()).ok());
}

}  // namespace
}  // namespace chunkflow::engine
