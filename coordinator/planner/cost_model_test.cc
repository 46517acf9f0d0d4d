#include "coordinator/planner/cost_model.h"

#include <string>

#include "gtest/gtest.h"

namespace chunkflow::planner {
namespace {

constexpr char kQwen05B[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
  "intermediate_size": 4864, "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": true,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0})";

TEST(ModelShapeFromHfConfig, Qwen2Config_MatchesPreset) {
  absl::StatusOr<ModelShape> m = ModelShapeFromHfConfig(kQwen05B, "config.json");
  ASSERT_TRUE(m.ok()) << m.status();
  ModelShape preset = *ModelPreset("qwen2.5-0.5b");
  EXPECT_EQ(m->hidden, preset.hidden);
  EXPECT_EQ(m->kv_heads, preset.kv_heads);
  EXPECT_EQ(m->layers, preset.layers);
  EXPECT_TRUE(m->tied_embeddings);
  // 24 layers of the published 0.5B model: 494M parameters with embeddings.
  const int64_t total = m->LayerParams() * m->layers + m->vocab * m->hidden + m->hidden;
  EXPECT_NEAR(static_cast<double>(total), 494e6, 2e6);
}

TEST(ModelShapeFromHfConfig, MissingKvHeads_DefaultsToHeads) {
  absl::StatusOr<ModelShape> m = ModelShapeFromHfConfig(
      R"({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
          "num_hidden_layers": 2, "vocab_size": 100})",
      "x");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->kv_heads, 4);
}

TEST(ModelShapeFromHfConfig, BadConfig_NamesField) {
  auto expect = [](const std::string& json, const std::string& needle) {
    absl::StatusOr<ModelShape> m = ModelShapeFromHfConfig(json, "cfg.json");
    ASSERT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_NE(std::string(m.status().message()).find(needle), std::string::npos) << m.status();
  };
  expect("{", "not a JSON object");
  expect(R"({"hidden_size": 64})", "missing field 'intermediate_size'");
  expect(R"({"hidden_size": "64", "intermediate_size": 1, "num_hidden_layers": 1,
             "num_attention_heads": 1, "vocab_size": 1})",
         "'hidden_size' must be an integer");
  expect(R"({"hidden_size": 64, "intermediate_size": 1, "num_hidden_layers": 1,
             "num_attention_heads": 5, "vocab_size": 1})",
         "not divisible by num_attention_heads 5");
}

TEST(ModelPreset, Unknown_ListsKnown) {
  absl::StatusOr<ModelShape> m = ModelPreset("gpt5");
  ASSERT_FALSE(m.ok());
  EXPECT_NE(std::string(m.status().message()).find("qwen2.5-7b"), std::string::npos);
}

TEST(LayersPerStage, Remainder_GoesToEarlyStages) {
  EXPECT_EQ(LayersPerStage(28, 3), (std::vector<int64_t>{10, 9, 9}));
  EXPECT_EQ(LayersPerStage(4, 4), (std::vector<int64_t>{1, 1, 1, 1}));
}

TEST(CostModelFromShape, HeadOnLastStage_QuadraticPerLayer) {
  ModelShape m = *ModelPreset("qwen2.5-7b");
  DeviceModel dev;
  dev.flops_per_s = 1e12;
  CostModel c = CostModelFromShape(m, 2, dev);
  ASSERT_EQ(c.stages.size(), 2u);
  EXPECT_DOUBLE_EQ(c.stages[0].quadratic_s_per_pair, 4.0 * 3584 * 14 / 1e12);
  EXPECT_DOUBLE_EQ(c.stages[1].linear_s_per_token - c.stages[0].linear_s_per_token,
                   2.0 * 3584 * 152064 / 1e12);
}

TEST(MemoryModelFromShape, LogitsOnLastStage) {
  ModelShape m = *ModelPreset("tiny");
  MemoryModel mem = MemoryModelFromShape(m, 2);
  EXPECT_DOUBLE_EQ(mem.activation_bytes_per_token[1] - mem.activation_bytes_per_token[0],
                   4.0 * m.vocab);
  EXPECT_GT(mem.static_bytes[0], 0);
}

}  // namespace
}  // namespace chunkflow::planner
