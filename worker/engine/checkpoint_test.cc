// Checkpoints: Save/LoadWeights/LoadOptimizer round trips across pipeline
// splits, and loads that fail change nothing.

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/engine/engine.h"
#include "worker/engine/safetensors.h"

namespace chunkflow::engine {
namespace {

using ::testing::HasSubstr;

std::string TmpDir(const std::string& name) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  return std::string(tmp ? tmp : "/tmp") + "/" + name;
}

StepData Data(int64_t vocab) {
  std::mt19937_64 rng(3);
  StepData d;
  for (int64_t id : {0, 1, 2}) {
    SequenceData s;
    s.id = id;
    for (int i = 0; i < 10 + 7 * id; ++i) s.tokens.push_back(static_cast<int32_t>(rng() % vocab));
    d.sequences[id] = s;
  }
  return d;
}

std::unique_ptr<Engine> Make(const ModelConfig& c, int32_t pp) {
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(c, pp);
  EXPECT_TRUE(e.ok()) << e.status();
  (*e)->InitRandom(11);
  return std::move(*e);
}

TEST(Checkpoint, SaveTwoStagesLoadOneStage_SameWeightsAndNextStep) {
  const ModelConfig c = TinyQwen2Config();  // tied embeddings
  std::unique_ptr<Engine> a = Make(c, 2);
  TrainOptions o;
  o.chunk_size = 4;
  o.lr = 1e-2f;
  ASSERT_TRUE(a->TrainStep(Data(c.vocab_size), o).ok());
  const std::string dir = TmpDir("ck_roundtrip");
  ASSERT_TRUE(a->Save(dir).ok());

  absl::StatusOr<SafetensorsReader> file = SafetensorsReader::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->names(), [&] {
    std::vector<std::string> n = ModelTensorNames(c);
    std::sort(n.begin(), n.end());
    return n;
  }());
  EXPECT_EQ(file->Find("lm_head.weight"), nullptr);

  std::unique_ptr<Engine> b = Make(ParseHfConfig(ToHfConfigJson(c), "saved").value(), 1);
  ASSERT_TRUE(b->LoadWeights(dir).ok());
  ASSERT_TRUE(b->LoadOptimizer(dir + "/optimizer.safetensors").ok());
  EXPECT_EQ(b->optimizer_step(), 1);
  for (const std::string& name : ModelTensorNames(c)) {
    EXPECT_EQ(*a->Value(name), *b->Value(name)) << name;
  }
  // The next AdamW step continues from the saved moments on both.
  ASSERT_TRUE(a->TrainStep(Data(c.vocab_size), o).ok());
  ASSERT_TRUE(b->TrainStep(Data(c.vocab_size), o).ok());
  for (const std::string& name : ModelTensorNames(c)) {
    const std::vector<float> x = *a->Value(name), y = *b->Value(name);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-6) << name << "[" << i << "]";
  }
}

// Writes the engine's tensors to `path`, editing one: dropped, renamed or
// reshaped.
void WriteEdited(Engine& e, const std::string& path, const std::string& target,
                 const std::string& edit) {
  std::vector<std::vector<float>> keep;
  std::vector<TensorToWrite> out;
  for (int32_t s = 0; s < e.pp(); ++s) {
    for (const ParamTensor& t : e.stage_params(s).tensors()) {
      keep.push_back(*e.Value(t.name));
      TensorToWrite w{t.name, DType::kF32, t.shape, nullptr};
      if (t.name == target) {
        if (edit == "drop") continue;
        if (edit == "rename") w.name = "model.layers.9.mlp.up_proj.weight";
        if (edit == "reshape") std::swap(w.shape[0], w.shape[1]);
      }
      out.push_back(w);
    }
  }
  size_t i = 0;
  for (int32_t s = 0; s < e.pp(); ++s) {
    for (const ParamTensor& t : e.stage_params(s).tensors()) {
      for (TensorToWrite& w : out) {
        if (w.data == nullptr && (w.name == t.name || (t.name == target && edit == "rename"))) {
          w.data = keep[i].data();
          break;
        }
      }
      ++i;
    }
  }
  ASSERT_TRUE(WriteSafetensors(path, out, {}).ok());
}

TEST(Checkpoint, LoadWeights_BadCheckpoint_ErrorNamesTensorAndNothingChanges) {
  ModelConfig c = TinyLlamaConfig();
  std::unique_ptr<Engine> src = Make(c, 1);
  src->InitRandom(99);
  const std::string last = "model.layers.1.mlp.down_proj.weight";  // on stage 1 of 2
  struct Case {
    std::string edit;
    absl::StatusCode code;
    std::string needle;
  };
  for (const Case& k : {Case{"drop", absl::StatusCode::kNotFound, last},
                        Case{"rename", absl::StatusCode::kInvalidArgument,
                             "model.layers.9.mlp.up_proj.weight"},
                        Case{"reshape", absl::StatusCode::kInvalidArgument, last}}) {
    const std::string path = TmpDir("bad_" + k.edit + ".safetensors");
    WriteEdited(*src, path, last, k.edit);
    std::unique_ptr<Engine> dst = Make(c, 2);
    const std::vector<float> before = *dst->Value("model.embed_tokens.weight");
    absl::Status s = dst->LoadWeights(path);
    EXPECT_EQ(s.code(), k.code) << k.edit << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(k.needle)) << k.edit;
    // Stage 0 could have loaded: it did not.
    EXPECT_EQ(*dst->Value("model.embed_tokens.weight"), before) << k.edit;
  }
}

// What transformers skips on load is skipped here too: old RoPE buffers, and
// an lm_head.weight saved beside embeddings the config ties.
TEST(Checkpoint, LoadWeights_SkipsRopeBuffersAndATiedLmHead) {
  const ModelConfig c = TinyQwen2Config();  // tied embeddings
  ASSERT_TRUE(c.tie_word_embeddings);
  std::unique_ptr<Engine> src = Make(c, 1);
  std::vector<std::vector<float>> keep;
  std::vector<TensorToWrite> out;
  for (const ParamTensor& t : src->stage_params(0).tensors()) {
    keep.push_back(*src->Value(t.name));
  }
  size_t i = 0;
  for (const ParamTensor& t : src->stage_params(0).tensors()) {
    out.push_back({t.name, DType::kF32, t.shape, keep[i++].data()});
  }
  const std::vector<float> embed = *src->Value("model.embed_tokens.weight");
  std::vector<float> inv_freq(c.head_dim() / 2, 1.0f);
  out.push_back({"lm_head.weight", DType::kF32, {c.vocab_size, c.hidden_size}, embed.data()});
  out.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", DType::kF32,
                 {c.head_dim() / 2}, inv_freq.data()});
  const std::string path = TmpDir("extra.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, out, {}).ok());
  std::unique_ptr<Engine> dst = Make(c, 1);
  absl::Status s = dst->LoadWeights(path);
  ASSERT_TRUE(s.ok()) << s;
  EXPECT_EQ(*dst->Value("model.embed_tokens.weight"), embed);
}

// The source config's fields the engine does not model (special token ids,
// transformers_version) survive a save; the engine's own replace the
// source's (the weights are saved in float32).
TEST(Checkpoint, SavedConfig_KeepsTheSourcesOtherFields) {
  ModelConfig c = TinyQwen2Config();
  c.source_json = R"({"bos_token_id": 200, "eos_token_id": 201, "pad_token_id": 202,
                      "torch_dtype": "bfloat16", "hidden_size": 1, "custom": [1, 2]})";
  absl::StatusOr<ModelConfig> back = ParseHfConfig(ToHfConfigJson(c), "saved");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->hidden_size, c.hidden_size);
  const nlohmann::json j = nlohmann::json::parse(ToHfConfigJson(c));
  EXPECT_EQ(j["bos_token_id"], 200);
  EXPECT_EQ(j["eos_token_id"], 201);
  EXPECT_EQ(j["pad_token_id"], 202);
  EXPECT_EQ(j["custom"], nlohmann::json::array({1, 2}));
  EXPECT_EQ(j["torch_dtype"], "float32");
  EXPECT_EQ(j["hidden_size"], c.hidden_size);
}

// SGD keeps no optimizer state: its steps are not AdamW's steps, so AdamW
// resumed from an SGD checkpoint starts its bias correction at step 1.
TEST(Checkpoint, SgdSteps_AreNotCountedAsOptimizerSteps) {
  const ModelConfig c = TinyQwen2Config();
  std::unique_ptr<Engine> e = Make(c, 1);
  TrainOptions o;
  o.optimizer = OptimizerKind::kSgd;
  o.lr = 0.01f;
  ASSERT_TRUE(e->TrainStep(Data(c.vocab_size), o).ok());
  EXPECT_EQ(e->optimizer_step(), 0);
  o.optimizer = OptimizerKind::kAdamW;
  ASSERT_TRUE(e->TrainStep(Data(c.vocab_size), o).ok());
  EXPECT_EQ(e->optimizer_step(), 1);
}

TEST(Checkpoint, LoadOptimizer_MissingFile_NotFound) {
  std::unique_ptr<Engine> e = Make(TinyQwen2Config(), 1);
  EXPECT_EQ(e->LoadOptimizer(TmpDir("none/optimizer.safetensors")).code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace chunkflow::engine
