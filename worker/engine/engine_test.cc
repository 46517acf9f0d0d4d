// Chunked training equals unchunked training; packed sequences equal the same
// sequences alone; a pipeline split equals one stage; the optimizers follow
// their formulas; finite differences agree with the whole model's backward.

#include "worker/engine/engine.h"

#include "worker/engine/pipeline.h"
#include "worker/engine/stage_executor.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "coordinator/planner/simulator.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"
#include "worker/engine/testing.h"

namespace chunkflow::engine {
namespace {

using ::testing::HasSubstr;

double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  return kernels::cpu::testing::RelativeError(a.data(), b.data(), static_cast<int64_t>(b.size()));
}

using testing::RandomData;

// Random weights large enough that every gradient is far from zero.
std::unique_ptr<Engine> MakeEngine(const ModelConfig& c, int32_t pp, uint64_t seed = 5) {
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(c, pp);
  EXPECT_TRUE(e.ok()) << e.status();
  (*e)->InitRandom(seed);
  for (int32_t s = 0; s < pp; ++s) testing::ScaleUpWeights((*e)->stage_params(s));
  return std::move(*e);
}

struct Grads {
  double loss = 0;
  std::map<std::string, std::vector<float>> by_name;
  std::map<int64_t, SequenceLoss> losses;
};

Grads Compute(Engine& e, const StepData& d, int64_t chunk_size, int32_t k) {
  absl::StatusOr<StepResult> r = e.ComputeGradients(d, chunk_size, k);
  EXPECT_TRUE(r.ok()) << r.status();
  Grads g;
  if (!r.ok()) return g;
  g.loss = r->loss;
  g.losses = r->losses;
  for (const std::string& name : ModelTensorNames(e.config())) {
    g.by_name[name] = *e.Gradient(name);
  }
  return g;
}

void ExpectSameGradients(const Grads& got, const Grads& want, double tol, const std::string& what) {
  EXPECT_NEAR(got.loss, want.loss, 1e-5 * std::fabs(want.loss)) << what;
  for (const auto& [name, g] : want.by_name) {
    const double err = RelErr(got.by_name.at(name), g);
    EXPECT_LT(err, tol) << what << ": " << name;
  }
}

ModelConfig Qwen2() { return TinyQwen2Config(); }
ModelConfig Llama() {
  ModelConfig c = TinyLlamaConfig();
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.num_hidden_layers = 3;
  return c;
}

// ---------------------------------------------------------------------------
// Chunked == unchunked
// ---------------------------------------------------------------------------

class ChunkedTest : public ::testing::TestWithParam<bool /*llama*/> {};

TEST_P(ChunkedTest, ComputeGradients_AnyChunkSizeAndK_MatchesUnchunked) {
  const ModelConfig c = GetParam() ? Llama() : Qwen2();
  std::unique_ptr<Engine> e = MakeEngine(c, 1);
  const StepData d = RandomData({90, 13, 7, 70, 2}, c.vocab_size, 3);
  const Grads whole = Compute(*e, d, /*chunk_size=*/90, /*k=*/1);
  EXPECT_GT(whole.loss, 0.5);
  for (int64_t cs : {1, 7, 64}) {
    for (int32_t k : {1, 2, 1000}) {
      ExpectSameGradients(Compute(*e, d, cs, k), whole, 1e-5,
                          "chunk_size " + std::to_string(cs) + " K " + std::to_string(k));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Architectures, ChunkedTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Llama" : "Qwen2"; });

TEST(Engine, PackedSequences_SameLossesAndGradientsAsAlone) {
  const ModelConfig c = Qwen2();
  std::unique_ptr<Engine> e = MakeEngine(c, 1);
  const StepData d = RandomData({20, 13, 7, 31}, c.vocab_size, 4);
  // chunk_size 80 packs all four sequences into one chunk.
  absl::StatusOr<StepResult> packed = e->ComputeGradients(d, 80, 1);
  ASSERT_TRUE(packed.ok()) << packed.status();
  ASSERT_EQ(packed->chunks, 1);
  const Grads all = Compute(*e, d, 80, 1);
  std::map<std::string, std::vector<double>> sum;
  for (const auto& [id, seq] : d.sequences) {
    StepData one;
    one.sequences[id] = seq;
    const Grads alone = Compute(*e, one, 80, 1);
    const SequenceLoss& in_pack = all.losses.at(id);
    const SequenceLoss& by_itself = alone.losses.at(id);
    EXPECT_EQ(in_pack.count, by_itself.count);
    EXPECT_NEAR(in_pack.sum, by_itself.sum, 1e-5 * std::fabs(by_itself.sum)) << "sequence " << id;
    // The packed gradient is the target-weighted sum of the alone gradients.
    const double w = double(by_itself.count) / double(packed->targets);
    for (const auto& [name, g] : alone.by_name) {
      std::vector<double>& acc = sum[name];
      acc.resize(g.size(), 0.0);
      for (size_t i = 0; i < g.size(); ++i) acc[i] += w * g[i];
    }
  }
  for (const auto& [name, g] : all.by_name) {
    std::vector<float> want(sum[name].begin(), sum[name].end());
    EXPECT_LT(RelErr(g, want), 1e-5) << name;
  }
}

// ---------------------------------------------------------------------------
// Pipeline stages
// ---------------------------------------------------------------------------

TEST(Engine, TwoAndThreeStages_MatchOneStage) {
  for (bool llama : {false, true}) {
    const ModelConfig c = llama ? Llama() : Qwen2();
    const StepData d = RandomData({40, 9, 25}, c.vocab_size, 6);
    std::unique_ptr<Engine> one = MakeEngine(c, 1);
    const Grads want = Compute(*one, d, 40, 1000);
    for (int32_t pp = 2; pp <= c.num_hidden_layers; ++pp) {
      std::unique_ptr<Engine> split = MakeEngine(c, pp);
      ExpectSameGradients(Compute(*split, d, 8, 2), want, 1e-5,
                          (llama ? "llama pp " : "qwen2 pp ") + std::to_string(pp));
    }
  }
}

TEST(Engine, TiedEmbeddingsOnThreeStages_MatchOneStage) {
  ModelConfig c = Qwen2();  // tied: the head's copy lives on the last stage
  c.num_hidden_layers = 3;
  const StepData d = RandomData({40, 9, 25}, c.vocab_size, 7);
  std::unique_ptr<Engine> one = MakeEngine(c, 1);
  const Grads want = Compute(*one, d, 40, 1000);
  std::unique_ptr<Engine> three = MakeEngine(c, 3);
  ExpectSameGradients(Compute(*three, d, 6, 1), want, 1e-5, "tied, pp 3");
  // Both copies of the embedding got the summed gradient.
  const ParamTensor* first = three->stage_params(0).Find("model.embed_tokens.weight");
  const ParamTensor* last = three->stage_params(2).Find("model.embed_tokens.weight");
  ASSERT_NE(first, nullptr);
  ASSERT_NE(last, nullptr);
  for (int64_t i = 0; i < first->numel; ++i) {
    ASSERT_EQ(three->stage_params(0).grads()[first->offset + i],
              three->stage_params(2).grads()[last->offset + i]);
  }
}

// Op lists that are out of order or incomplete are errors, not wrong numbers.
TEST(Engine, OpListsOutOfOrderOrIncomplete_FailedPrecondition) {
  const ModelConfig c = Qwen2();
  std::unique_ptr<Engine> e = MakeEngine(c, 1);
  const StepData d = RandomData({20}, c.vocab_size, 1);
  std::map<int32_t, ChunkInput> chunks;
  for (int32_t id : {0, 1}) {
    planner::Chunk ch;
    ch.id = id;
    ch.pieces.push_back({d.sequences.begin()->first, 10 * id, 10});
    chunks[id] = *MakeChunkInput(ch, d, c.vocab_size);
  }
  using planner::Op;
  using planner::OpType;
  const Op f0{OpType::kForward, 0, true, false}, f1{OpType::kForward, 1, true, false};
  const Op b0{OpType::kBackward, 0, false, false}, b1{OpType::kBackward, 1, false, false};
  Stage stage(&e->stage_params(0), nullptr);
  // Chunk 1 before chunk 0: it would attend to K/V that do not exist yet.
  absl::Status s = LocalPipeline({&stage}).Run({{f1, f0, b1, b0}}, chunks);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("forward the sequence's chunks in order"));
  stage.Reset();
  // No backward of chunk 0: partial gradients and state left behind.
  s = LocalPipeline({&stage}).Run({{f0, f1, b1}}, chunks);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("lacks backwards"));
  stage.Reset();
  // Backward before forward.
  s = LocalPipeline({&stage}).Run({{b0}}, chunks);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  stage.Reset();
  // The right order works.
  EXPECT_TRUE(LocalPipeline({&stage}).Run({{f0, f1, b1, b0}}, chunks).ok());
}

TEST(Engine, Create_MoreStagesThanLayers_InvalidArgument) {
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(Qwen2(), 3);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(e.status().message()), HasSubstr("pp 3"));
}

// ---------------------------------------------------------------------------
// Finite differences through the whole model
// ---------------------------------------------------------------------------

TEST(Engine, Gradients_MatchFiniteDifferencesOfTheLoss) {
  ModelConfig c = Qwen2();
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.vocab_size = 23;
  c.num_hidden_layers = 2;
  c.tie_word_embeddings = false;
  std::unique_ptr<Engine> e = MakeEngine(c, 1, 9);
  const StepData d = RandomData({11, 6}, c.vocab_size, 8);
  const Grads g = Compute(*e, d, 4, 1);
  StageParams& p = e->stage_params(0);
  std::mt19937_64 rng(1);
  int checked = 0;
  for (const ParamTensor& t : p.tensors()) {
    for (int rep = 0; rep < 3; ++rep) {
      const int64_t i = std::uniform_int_distribution<int64_t>(0, t.numel - 1)(rng);
      float* w = p.values().data() + t.offset + i;
      const float keep = *w, h = 1e-2f;
      *w = keep + h;
      const double up = e->ComputeGradients(d, 4, 1)->loss;
      *w = keep - h;
      const double down = e->ComputeGradients(d, 4, 1)->loss;
      *w = keep;
      const double fd = (up - down) / (2 * h);
      const double an = g.by_name.at(t.name)[i];
      EXPECT_NEAR(an, fd, 2e-3 + 2e-2 * std::fabs(fd)) << t.name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3 * static_cast<int>(p.tensors().size()));
}

// ---------------------------------------------------------------------------
// Optimizers
// ---------------------------------------------------------------------------

TEST(Engine, TrainStepSgd_SubtractsLrTimesGradient) {
  const ModelConfig c = Qwen2();
  std::unique_ptr<Engine> e = MakeEngine(c, 1);
  const StepData d = RandomData({30, 12}, c.vocab_size, 2);
  const Grads g = Compute(*e, d, 16, 1);
  std::map<std::string, std::vector<float>> before;
  for (const auto& [name, x] : g.by_name) before[name] = *e->Value(name);
  TrainOptions o;
  o.optimizer = OptimizerKind::kSgd;
  o.lr = 0.5f;
  o.clip = 0;
  o.chunk_size = 16;
  ASSERT_TRUE(e->TrainStep(d, o).ok());
  for (const auto& [name, grad] : g.by_name) {
    const std::vector<float> after = *e->Value(name);
    for (size_t i = 0; i < grad.size(); ++i) {
      ASSERT_FLOAT_EQ(after[i], before[name][i] - 0.5f * grad[i]) << name << "[" << i << "]";
    }
  }
}

TEST(Engine, TrainStepAdamW_FollowsFormulaWithClippingAndDecay) {
  const ModelConfig c = Qwen2();
  std::unique_ptr<Engine> e = MakeEngine(c, 2);
  const StepData d = RandomData({30, 12}, c.vocab_size, 2);
  TrainOptions o;
  o.lr = 1e-2f;
  o.weight_decay = 0.1f;
  o.clip = 0.05f;  // below the gradient norm: clipping is active
  o.chunk_size = 16;
  o.k = 1;
  const Grads g = Compute(*e, d, 16, 1);
  double norm = 0;
  for (const auto& [name, x] : g.by_name)
    for (float v : x) norm += double(v) * v;
  norm = std::sqrt(norm);
  ASSERT_GT(norm, o.clip);
  std::map<std::string, std::vector<float>> before;
  for (const auto& [name, x] : g.by_name) before[name] = *e->Value(name);
  absl::StatusOr<StepResult> r = e->TrainStep(d, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->grad_norm, norm, 1e-5 * norm);
  const double coef = o.clip / (norm + 1e-6);
  for (const auto& [name, grad] : g.by_name) {
    const bool decayed = name.find("norm") == std::string::npos &&
                         name.find("bias") == std::string::npos;
    const std::vector<float> after = *e->Value(name);
    for (size_t i = 0; i < grad.size(); ++i) {
      // Step 1 of AdamW: m = (1-b1) g, v = (1-b2) g^2, bias-corrected to g and g^2.
      const double gi = grad[i] * coef;
      double w = before[name][i];
      if (decayed) w -= 1e-2 * 0.1 * w;
      w -= 1e-2 * gi / (std::fabs(gi) + 1e-8);
      ASSERT_NEAR(after[i], w, 3e-6) << name << "[" << i << "]";
    }
  }
  // Step 2 checks the betas: m = b1 m1 + (1-b1) g2, v = b2 v1 + (1-b2) g2^2,
  // bias-corrected by 1 - b^2.
  std::map<std::string, std::vector<float>> mid;
  for (const auto& [name, x] : g.by_name) mid[name] = *e->Value(name);
  const Grads g2 = Compute(*e, d, 16, 1);
  double norm2 = 0;
  for (const auto& [name, x] : g2.by_name)
    for (float v : x) norm2 += double(v) * v;
  norm2 = std::sqrt(norm2);
  const double coef2 = norm2 > o.clip ? o.clip / (norm2 + 1e-6) : 1.0;
  ASSERT_TRUE(e->TrainStep(d, o).ok());
  const double b1 = 0.9, b2 = 0.999;
  for (const auto& [name, grad] : g2.by_name) {
    const bool decayed = name.find("norm") == std::string::npos &&
                         name.find("bias") == std::string::npos;
    const std::vector<float> after = *e->Value(name);
    for (size_t i = 0; i < grad.size(); ++i) {
      const double ga = g.by_name.at(name)[i] * coef, gb = grad[i] * coef2;
      const double m = b1 * (1 - b1) * ga + (1 - b1) * gb;
      const double v = b2 * (1 - b2) * ga * ga + (1 - b2) * gb * gb;
      double w = mid[name][i];
      if (decayed) w -= 1e-2 * 0.1 * w;
      w -= 1e-2 * (m / (1 - b1 * b1)) / (std::sqrt(v / (1 - b2 * b2)) + 1e-8);
      ASSERT_NEAR(after[i], w, 1e-5) << name << "[" << i << "]";
    }
  }
}

// ---------------------------------------------------------------------------
// Memory and errors
// ---------------------------------------------------------------------------

TEST(Engine, PeakActivations_FollowKNotSequenceLength) {
  const ModelConfig c = Qwen2();
  std::unique_ptr<Engine> e = MakeEngine(c, 1);
  const StepData d = RandomData({512}, c.vocab_size, 1);
  const int64_t whole = e->ComputeGradients(d, 512, 1)->peak_activation_bytes;
  const int64_t k1 = e->ComputeGradients(d, 64, 1)->peak_activation_bytes;
  const int64_t k2 = e->ComputeGradients(d, 64, 2)->peak_activation_bytes;
  const int64_t k8 = e->ComputeGradients(d, 64, 8)->peak_activation_bytes;
  // 8 chunks: K=1 keeps one chunk's activations (plus 7 stage inputs on a
  // first stage: none), K=2 two, K=8 all of them.
  EXPECT_LT(k1 * 6, whole);
  EXPECT_NEAR(double(k2), 2.0 * k1, 0.05 * k2);
  EXPECT_NEAR(double(k8), double(whole), 0.05 * whole);
}

// The planner's memory model is what the coordinator and `plan` judge a
// ChunkSize and K by: its state store must be the engine's, byte for byte.
// Only the state is compared (the model's activations are the CUDA engine's
// bf16 ones, not this engine's fp32).
TEST(Engine, PeakState_EqualsThePlannersMemoryModel) {
  const ModelConfig c = Llama();
  for (int32_t pp : {1, 2}) {
    std::unique_ptr<Engine> e = MakeEngine(c, pp);
    const StepData d = RandomData({90, 13, 7, 70, 2}, c.vocab_size, 3);
    planner::MemoryModel mem = planner::MemoryModelFromShape(ShapeOf(c), pp);
    mem.static_bytes.assign(pp, 0);
    mem.activation_bytes_per_token.assign(pp, 0.0);
    mem.input_bytes_per_token.assign(pp, 0.0);
    for (int64_t cs : {16, 40, 200}) {
      for (int32_t k : {1, 3}) {
        const std::string what = "pp " + std::to_string(pp) + " ChunkSize " +
                                 std::to_string(cs) + " K " + std::to_string(k);
        absl::StatusOr<PlannedStep> planned = PlanLocalStep(c, pp, d, cs, k);
        ASSERT_TRUE(planned.ok()) << planned.status();
        absl::StatusOr<planner::SimResult> sim = planner::Simulate(
            planned->plan, planner::CostModelFromShape(ShapeOf(c), pp, planner::DeviceModel{}),
            mem);
        ASSERT_TRUE(sim.ok()) << sim.status();
        absl::StatusOr<StepResult> r = e->ComputeGradients(d, cs, k);
        ASSERT_TRUE(r.ok()) << r.status();
        const int64_t predicted =
            *std::max_element(sim->peak_memory_bytes.begin(), sim->peak_memory_bytes.end());
        EXPECT_EQ(r->peak_state_bytes, predicted) << what;
        EXPECT_GT(predicted, 0) << what;
      }
    }
  }
}

TEST(Engine, TokenOutsideVocabulary_InvalidArgumentNamingIt) {
  const ModelConfig c = Qwen2();
  std::unique_ptr<Engine> e = MakeEngine(c, 1);
  StepData d = RandomData({10}, c.vocab_size, 1);
  d.sequences.begin()->second.tokens[4] = 256;
  absl::StatusOr<StepResult> r = e->ComputeGradients(d, 8, 1);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("token id 256"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("position 4"));
}

TEST(Engine, Evaluate_MatchesTrainingForwardLosses) {
  const ModelConfig c = Llama();
  std::unique_ptr<Engine> e = MakeEngine(c, 3);
  const StepData d = RandomData({33, 5, 17}, c.vocab_size, 12);
  const Grads g = Compute(*e, d, 8, 1);
  absl::StatusOr<std::map<int64_t, SequenceLoss>> ev = e->Evaluate(d, 16);
  ASSERT_TRUE(ev.ok()) << ev.status();
  for (const auto& [id, l] : g.losses) {
    EXPECT_EQ(ev->at(id).count, l.count);
    EXPECT_NEAR(ev->at(id).sum, l.sum, 1e-5 * std::fabs(l.sum)) << "sequence " << id;
  }
}

// The chunks an op list holds activations for at once: forwards that keep
// them (recomputes included) less the backwards done; dropping forwards
// hold none.
TEST(MaxChunksHeld, CountsKeptForwardsLessBackwards) {
  using planner::Op;
  using planner::OpType;
  auto fwd = [](int32_t c, bool keep, bool recompute = false) {
    return Op{OpType::kForward, c, keep, recompute};
  };
  auto bwd = [](int32_t c) { return Op{OpType::kBackward, c, true, false}; };
  EXPECT_EQ(MaxChunksHeld({}), 1);
  EXPECT_EQ(MaxChunksHeld({fwd(0, true), bwd(0), fwd(1, true), bwd(1)}), 1);
  // 1F1B warm-up of three chunks.
  EXPECT_EQ(MaxChunksHeld({fwd(0, true), fwd(1, true), fwd(2, true), bwd(0), fwd(3, true), bwd(1),
                           bwd(2), bwd(3)}),
            3);
  // A chain of four with K = 2: two dropped, two kept, then the dropped
  // ones recomputed as the backward reaches them.
  EXPECT_EQ(MaxChunksHeld({fwd(0, false), fwd(1, false), fwd(2, true), fwd(3, true), bwd(3),
                           bwd(2), fwd(0, true, true), fwd(1, true, true), bwd(1), bwd(0)}),
            2);
}

// A sequence's state is allocated at its first forward and freed by the
// backward of its first chunk; recomputes and sequences not in the data
// add nothing.
TEST(StateTimelineOf, FirstForwardReachesFirstChunksBackwardFrees) {
  using planner::Op;
  using planner::OpType;
  planner::Plan plan;
  auto chunk = [](std::vector<planner::Piece> pieces) {
    planner::Chunk c;
    for (const planner::Piece& p : pieces) c.tokens += p.length;
    c.pieces = std::move(pieces);
    return c;
  };
  // Sequence 7 (20 tokens) in two chunks, the second packed with 9 (5).
  plan.chunks = {chunk({{7, 0, 12}}), chunk({{7, 12, 8}, {9, 0, 5}}), chunk({{42, 0, 3}})};
  StepData data;
  data.sequences[7].tokens.assign(20, 1);
  data.sequences[9].tokens.assign(5, 1);
  // Chunk 2 drops its activations; the backward of chunk 1 carries the
  // recompute flag (only a forward's means anything: it still frees).
  const std::vector<Op> ops = {
      {OpType::kForward, 0, true, false},  {OpType::kForward, 1, true, false},
      {OpType::kForward, 2, false, false}, {OpType::kBackward, 1, true, true},
      {OpType::kForward, 0, true, true},   {OpType::kBackward, 0, true, false}};
  const StateTimeline t = StateTimelineOf(plan, ops, data);
  EXPECT_EQ(t.chunk_rows, 13);
  ASSERT_EQ(t.events.size(), 4u);
  auto is = [](const StateEvent& e, int64_t seq, int64_t tokens, bool freed, int64_t rows,
               int64_t held) {
    return e.seq == seq && e.tokens == tokens && e.freed == freed && e.rows == rows &&
           e.held == held;
  };
  EXPECT_TRUE(is(t.events[0], 7, 20, false, 12, 0));
  EXPECT_TRUE(is(t.events[1], 9, 5, false, 13, 1));  // chunk 0 holds its activations
  EXPECT_TRUE(is(t.events[2], 9, 5, true, 0, 0));    // chunk 1 holds 9's first piece
  EXPECT_TRUE(is(t.events[3], 7, 20, true, 0, 0));   // chunk 0's backward
}

}  // namespace
}  // namespace chunkflow::engine
