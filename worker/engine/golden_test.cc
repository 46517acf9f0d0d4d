// The engine against Hugging Face transformers: tiny random Qwen2 and Llama
// models (tools/golden/make_golden.py wrote their config.json,
// model.safetensors and golden.safetensors with input ids, labels, logits,
// loss and every parameter's gradient). fp32 here against a float64
// reference there; relative error (L2 norm of the difference over the L2
// norm of the reference) <= 1e-4 per tensor. No Python at test time.

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"
#include "worker/engine/engine.h"
#include "worker/engine/model_config.h"
#include "worker/engine/safetensors.h"

namespace chunkflow::engine {
namespace {

constexpr double kTol = 1e-4;

std::string CaseDir(const std::string& name) {
  const char* srcdir = std::getenv("TEST_SRCDIR");
  return absl::StrCat(srcdir != nullptr ? srcdir : ".", "/chunkflow/worker/engine/testdata/golden/",
                      name);
}

double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  return kernels::cpu::testing::RelativeError(a.data(), b.data(), static_cast<int64_t>(b.size()));
}

struct Golden {
  ModelConfig config;
  int64_t batch = 0, length = 0;
  StepData data;
  std::vector<float> logits;  // (B, L, V)
  float loss = 0;
  std::unique_ptr<SafetensorsReader> reader;
};

Golden Load(const std::string& name) {
  Golden g;
  const std::string dir = CaseDir(name);
  absl::StatusOr<ModelConfig> config = LoadHfConfig(dir + "/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  g.config = *config;
  absl::StatusOr<SafetensorsReader> r = SafetensorsReader::Open(dir + "/golden.safetensors");
  EXPECT_TRUE(r.ok()) << r.status();
  g.reader = std::make_unique<SafetensorsReader>(std::move(*r));
  const TensorInfo* ids = g.reader->Find("input_ids");
  EXPECT_NE(ids, nullptr);
  g.batch = ids->shape[0];
  g.length = ids->shape[1];
  std::vector<int32_t> tokens(g.batch * g.length), labels(g.batch * g.length);
  EXPECT_TRUE(g.reader->ReadI32("input_ids", {g.batch, g.length}, tokens.data()).ok());
  EXPECT_TRUE(g.reader->ReadI32("labels", {g.batch, g.length}, labels.data()).ok());
  for (int64_t b = 0; b < g.batch; ++b) {
    SequenceData s;
    s.id = b;
    s.tokens.assign(tokens.begin() + b * g.length, tokens.begin() + (b + 1) * g.length);
    s.labels.assign(labels.begin() + b * g.length, labels.begin() + (b + 1) * g.length);
    g.data.sequences[b] = s;
  }
  g.logits.resize(g.batch * g.length * g.config.vocab_size);
  EXPECT_TRUE(
      g.reader->ReadF32("logits", {g.batch, g.length, g.config.vocab_size}, g.logits.data()).ok());
  EXPECT_TRUE(g.reader->ReadF32("loss", {1}, &g.loss).ok());
  return g;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

void CheckCase(const Golden& g, Engine& e, int64_t chunk_size, int32_t k, const std::string& what) {
  absl::StatusOr<StepResult> r = e.ComputeGradients(g.data, chunk_size, k);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->loss, g.loss, kTol * std::fabs(g.loss)) << what;
  int checked = 0;
  double worst = 0;
  std::string worst_name;
  for (const std::string& name : ModelTensorNames(g.config)) {
    const TensorInfo* t = g.reader->Find("grad." + name);
    ASSERT_NE(t, nullptr) << "golden file lacks grad." << name;
    std::vector<float> want(t->numel);
    ASSERT_TRUE(g.reader->ReadF32("grad." + name, t->shape, want.data()).ok());
    absl::StatusOr<std::vector<float>> got = e.Gradient(name);
    ASSERT_TRUE(got.ok()) << got.status();
    const double err = RelErr(*got, want);
    EXPECT_LT(err, kTol) << what << ": gradient of " << name;
    if (err > worst) worst = err, worst_name = name;
    ++checked;
  }
  std::cout << what << ": loss " << r->loss << " (golden " << g.loss << "), worst gradient "
            << worst_name << " relative error " << worst << "\n";
  // Every gradient of the golden file was compared: no tensor left out.
  int golden_grads = 0;
  for (const std::string& n : g.reader->names()) golden_grads += n.rfind("grad.", 0) == 0;
  EXPECT_EQ(checked, golden_grads);
}

TEST_P(GoldenTest, LogitsLossAndGradients_MatchTransformers) {
  const Golden g = Load(GetParam());
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(g.config, 1);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE((*e)->LoadWeights(CaseDir(GetParam()) + "/model.safetensors").ok());
  for (int64_t b = 0; b < g.batch; ++b) {
    absl::StatusOr<std::vector<float>> logits = (*e)->Logits(g.data.sequences.at(b));
    ASSERT_TRUE(logits.ok()) << logits.status();
    const int64_t n = g.length * g.config.vocab_size;
    std::vector<float> want(g.logits.begin() + b * n, g.logits.begin() + (b + 1) * n);
    EXPECT_LT(RelErr(*logits, want), kTol) << "logits of sequence " << b;
  }
  CheckCase(g, **e, g.length, 1, "unchunked");
  CheckCase(g, **e, 7, 2, "chunk_size 7, K 2");
}

TEST_P(GoldenTest, TwoStagesChunked_MatchTransformers) {
  const Golden g = Load(GetParam());
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(g.config, 2);
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_TRUE((*e)->LoadWeights(CaseDir(GetParam())).ok());
  CheckCase(g, **e, 5, 1, "pp 2, chunk_size 5, K 1");
}

INSTANTIATE_TEST_SUITE_P(Cases, GoldenTest,
                         ::testing::Values("qwen2_tiny", "llama_tiny", "qwen2_untied_long"));

}  // namespace
}  // namespace chunkflow::engine
