// cuda_step_bench: one training step of the CUDA engine beside PyTorch eager
// on the same GPU, and the step's peak device memory for one long sequence.
//
// (a) Throughput. TrainStep (forward, backward, clipping at 1.0, AdamW) of a
//     Qwen2-0.5B-shaped model (random weights) on a fixed long-tailed batch
//     (--lengths), ChunkSize --chunk_size with each K of --ks, bf16 GEMMs and
//     flash attention with fp32 master weights. Beside it, in the same run,
//     tools/bench/torch_step.py on the same tokens (same splitmix64 stream,
//     checked by checksum) with --device=cuda --bf16 --tied: PyTorch eager,
//     autocast bf16, SDPA, per-sequence forward/backward. Median of --steps
//     timed steps after --warmup. Model FLOPs per step: 6 x (matmul
//     parameters) x tokens + 6 x layers x heads x head_dim x sum(T^2) (causal
//     attention, PaLM's count with the causal half); MFU = model FLOP/s /
//     --peak_tflops. --variants=unfused adds, in the same run, the first K
//     with CudaStageOptions::fused_elementwise off (the same bits, the
//     elementwise ops and their bf16 conversions as separate kernels).
// (b) Memory. ComputeGradients of one sequence of --memory_tokens tokens:
//     ChunkSize --memory_chunk_size with K=1 (state on the device, then
//     offloaded to pinned host memory), then unchunked; each in a fresh
//     engine, reporting the allocator's exact peak (weights, gradients and
//     AdamW state included) or, when it does not fit, the allocation that
//     failed.
//
// Tables go to stdout, progress to stderr; --json=<path> writes the rows.
//
//   bazel build -c opt //worker/engine/cuda:cuda_step_bench     (any machine)
//   bazel-bin/worker/engine/cuda/cuda_step_bench --json=/tmp/step.json   (GPU)

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tools/bench/bench_util.h"
#include "worker/engine/torch_step_args.h"
#include "worker/engine/cuda/cuda_engine.h"
#include "worker/engine/model_config.h"

ABSL_FLAG(std::string, sections, "throughput,memory", "Sections: throughput, memory");
ABSL_FLAG(std::string, json, "", "Also write the rows as JSON to this path");
ABSL_FLAG(std::string, model, "qwen2.5-0.5b", "Model shape: qwen2.5-0.5b or tiny (a smoke run)");
ABSL_FLAG(int64_t, layers, 0, "Override the model's layer count (0: the preset's)");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the weights and of the token stream");
ABSL_FLAG(std::string, lengths,
          "16384,8192,4096,4096,2048,2048,1024,1024,1024,512,512,512,256,256,128,128",
          "Throughput: sequence lengths of the batch");
ABSL_FLAG(int64_t, chunk_size, 8192, "Throughput: ChunkSize");
ABSL_FLAG(std::string, ks, "1", "Throughput: K of each config, comma-separated");
ABSL_FLAG(std::string, precision, "bf16", "bf16 or fp32 (GEMMs)");
ABSL_FLAG(std::string, variants, "unfused",
          "Throughput: extra engine rows, comma-separated: unfused (the first K with the bf16 "
          "elementwise fusions off); empty for none");
ABSL_FLAG(int32_t, warmup, 1, "Throughput: untimed steps first");
ABSL_FLAG(int32_t, steps, 3, "Throughput: timed steps (median)");
ABSL_FLAG(double, peak_tflops, 989.4,
          "Dense bf16 peak of the GPU for MFU (H100 SXM and H200: 989.4)");
ABSL_FLAG(std::string, torch_python, "python3",
          "Python with torch for the PyTorch row; skipped (visibly) when empty or without torch");
ABSL_FLAG(std::string, torch_script, "tools/bench/torch_step.py", "The PyTorch baseline script");
ABSL_FLAG(int64_t, memory_tokens, 131072, "Memory: tokens of the one sequence");
ABSL_FLAG(int64_t, memory_chunk_size, 8192, "Memory: ChunkSize of the chunked run");

namespace chunkflow::engine::cuda {
namespace {

using namespace ::chunkflow::bench;  // NOLINT: the shared bench helpers

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

absl::StatusOr<ModelConfig> BenchModel(int64_t longest) {
  const std::string name = absl::GetFlag(FLAGS_model);
  ModelConfig c;
  if (name == "qwen2.5-0.5b") {
    c = Qwen25_0_5BConfig();
  } else if (name == "tiny") {
    c = TinyQwen2Config();
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--model must be qwen2.5-0.5b or tiny, got '", name, "'"));
  }
  if (absl::GetFlag(FLAGS_layers) > 0) c.num_hidden_layers = absl::GetFlag(FLAGS_layers);
  c.max_position_embeddings = std::max<int64_t>(c.max_position_embeddings, longest);
  return c;
}

StepData MakeData(const std::vector<int64_t>& lengths, int64_t vocab, int64_t* checksum) {
  StepData data;
  std::vector<std::vector<int32_t>> tokens = SplitMix64Tokens(lengths, vocab, absl::GetFlag(FLAGS_seed), checksum);
  for (size_t i = 0; i < tokens.size(); ++i) {
    SequenceData& s = data.sequences[static_cast<int64_t>(i)];
    s.id = static_cast<int64_t>(i);
    s.tokens = std::move(tokens[i]);
  }
  return data;
}

// Model FLOPs of one training step (see the file comment).
double StepFlops(const ModelConfig& c, const std::vector<int64_t>& lengths) {
  const double C = c.hidden_size, qd = c.num_attention_heads * c.head_dim(), kvd = c.kv_dim(),
               I = c.intermediate_size, L = c.num_hidden_layers, V = c.vocab_size;
  const double matmul = L * (C * qd + 2 * C * kvd + qd * C + 3 * C * I) + V * C;
  double tokens = 0, squares = 0;
  for (int64_t t : lengths) {
    tokens += t;
    squares += static_cast<double>(t) * t;
  }
  return 6 * matmul * tokens + 6 * L * qd * squares;
}

Precision ParsePrecision() {
  return absl::GetFlag(FLAGS_precision) == "fp32" ? Precision::kFp32 : Precision::kBf16;
}

struct Row {
  std::string implementation, config, note;
  int64_t tokens = 0;
  double seconds = 0, loss = 0, peak_gib = 0;
};

absl::StatusOr<Row> TimeEngine(const ModelConfig& cfg, const StepData& data, int64_t chunk,
                               int32_t k, bool fused = true) {
  CudaEngineOptions o;
  o.precision = ParsePrecision();
  o.fused_elementwise = fused;
  absl::StatusOr<std::unique_ptr<CudaEngine>> e = CudaEngine::Create(cfg, 1, o);
  if (!e.ok()) return e.status();
  if (absl::Status s = (*e)->InitRandom(absl::GetFlag(FLAGS_seed)); !s.ok()) return s;
  TrainOptions opt;
  opt.chunk_size = chunk;
  opt.k = k;
  Row row;
  row.implementation = "ChunkFlow CUDA";
  row.config = absl::StrCat(absl::GetFlag(FLAGS_precision), ", ChunkSize=", chunk, " K=", k,
                            (*e)->stage(0).uses_flash_attention() ? ", flash" : ", reference attn",
                            fused ? "" : ", unfused elementwise");
  std::vector<double> times;
  const int32_t warmup = absl::GetFlag(FLAGS_warmup), steps = absl::GetFlag(FLAGS_steps);
  for (int32_t i = 0; i < warmup + steps; ++i) {
    const double t0 = Now();
    absl::StatusOr<StepResult> r = (*e)->TrainStep(data, opt);
    const double dt = Now() - t0;
    if (!r.ok()) return r.status();
    row.tokens = r->tokens;
    row.loss = r->loss;
    row.peak_gib = std::max(row.peak_gib, r->peak_device_bytes / kGiB);
    if (i >= warmup) times.push_back(dt);
    std::fprintf(stderr, "cuda_step_bench: %s %s %d: %.3f s, loss %.4f, %lld chunks\n",
                 row.config.c_str(), i >= warmup ? "step" : "warm-up", i + 1, dt, r->loss,
                 static_cast<long long>(r->chunks));
  }
  row.seconds = Median(times);
  return row;
}

Row TimeTorch(const ModelConfig& cfg, const std::string& lengths, int64_t checksum) {
  Row row;
  row.implementation = "PyTorch eager";
  const BaselineResult base = RunTorchBaseline(
      absl::GetFlag(FLAGS_torch_python), absl::GetFlag(FLAGS_torch_script),
      absl::StrCat("--device=cuda", absl::GetFlag(FLAGS_precision) == "bf16" ? " --bf16" : "",
                   cfg.tie_word_embeddings ? " --tied" : "", " --lengths=", lengths,
                   " --seed=", absl::GetFlag(FLAGS_seed), TorchStepModelArgs(cfg),
                   " --warmup=", absl::GetFlag(FLAGS_warmup),
                   " --steps=", absl::GetFlag(FLAGS_steps)),
      checksum, "cuda_step_bench");
  if (!base.note.empty()) {
    row.note = base.note;
    return row;
  }
  const TorchStepResult r = ParseTorchStepResult(base.line);
  row.seconds = r.seconds;
  row.tokens = r.tokens;
  row.loss = r.loss;
  row.peak_gib = JsonNumber(base.line, "peak_device_mib").value_or(0) / 1024.0;
  row.config =
      absl::StrCat("torch ", r.torch_version, ", autocast bf16, per-sequence, ", r.attention);
  return row;
}

absl::Status RunThroughput(std::vector<std::string>* json) {
  absl::StatusOr<std::vector<int64_t>> lengths = ParseInts("lengths", absl::GetFlag(FLAGS_lengths));
  if (!lengths.ok()) return lengths.status();
  absl::StatusOr<std::vector<int64_t>> ks = ParseInts("ks", absl::GetFlag(FLAGS_ks));
  if (!ks.ok()) return ks.status();
  const int64_t longest = *std::max_element(lengths->begin(), lengths->end());
  absl::StatusOr<ModelConfig> cfg = BenchModel(longest);
  if (!cfg.ok()) return cfg.status();
  int64_t checksum = 0;
  const StepData data = MakeData(*lengths, cfg->vocab_size, &checksum);
  const double flops = StepFlops(*cfg, *lengths);
  bool unfused = false;
  for (absl::string_view v : absl::StrSplit(absl::GetFlag(FLAGS_variants), ',', absl::SkipEmpty())) {
    if (v != "unfused") {
      return absl::InvalidArgumentError(
          absl::StrCat("--variants: unknown '", v, "' (known: unfused)"));
    }
    unfused = ParsePrecision() == Precision::kBf16;
    if (!unfused) {
      std::fprintf(stderr,
                   "cuda_step_bench: --variants=unfused skipped: the fusions are bf16-only\n");
    }
  }
  std::vector<Row> rows;
  for (int64_t k : *ks) {
    absl::StatusOr<Row> r =
        TimeEngine(*cfg, data, absl::GetFlag(FLAGS_chunk_size), static_cast<int32_t>(k));
    if (!r.ok()) return r.status();
    rows.push_back(*r);
  }
  if (unfused) {
    absl::StatusOr<Row> r = TimeEngine(*cfg, data, absl::GetFlag(FLAGS_chunk_size),
                                       static_cast<int32_t>(ks->front()), /*fused=*/false);
    if (!r.ok()) return r.status();
    rows.push_back(*r);
  }
  rows.push_back(TimeTorch(*cfg, absl::StrJoin(*lengths, ","), checksum));
  const Row& torch = rows.back();
  const double peak = absl::GetFlag(FLAGS_peak_tflops);
  std::vector<std::vector<std::string>> table = {{"implementation", "config", "tokens",
                                                  "step s", "tokens/s", "TFLOP/s", "MFU",
                                                  "peak GiB", "vs PyTorch"}};
  for (const Row& r : rows) {
    if (!r.note.empty()) {
      table.push_back({r.note});
      continue;
    }
    const double tflops = r.seconds > 0 ? flops / r.seconds / 1e12 : 0;
    table.push_back({r.implementation, r.config, absl::StrCat(r.tokens),
                     absl::StrFormat("%.3f", r.seconds),
                     absl::StrFormat("%.0f", r.seconds > 0 ? r.tokens / r.seconds : 0),
                     absl::StrFormat("%.1f", tflops), absl::StrFormat("%.1f%%", 100 * tflops / peak),
                     absl::StrFormat("%.2f", r.peak_gib),
                     torch.note.empty() && r.seconds > 0
                         ? absl::StrFormat("%.2fx", torch.seconds / r.seconds)
                         : "n/a"});
    json->push_back(absl::StrCat(
        "{\"section\":\"throughput\",\"implementation\":", Quoted(r.implementation),
        ",\"config\":", Quoted(r.config), ",\"tokens\":", r.tokens, ",\"step_seconds\":",
        Num(r.seconds), ",\"tflops\":", Num(tflops), ",\"mfu\":", Num(tflops / peak),
        ",\"peak_gib\":", Num(r.peak_gib), ",\"loss\":", Num(r.loss), "}"));
  }
  PrintTable(absl::StrCat("Throughput: one TrainStep of ", absl::GetFlag(FLAGS_model), " (",
                          cfg->num_hidden_layers, " layers), lengths ",
                          absl::GetFlag(FLAGS_lengths), "; model FLOPs/step ",
                          absl::StrFormat("%.3g", flops), "; MFU vs ", Num(peak),
                          " TFLOP/s; vs PyTorch = PyTorch step s / this step s"),
             2, table);
  return absl::OkStatus();
}

absl::Status RunMemory(std::vector<std::string>* json) {
  const int64_t tokens = absl::GetFlag(FLAGS_memory_tokens);
  const int64_t chunk = absl::GetFlag(FLAGS_memory_chunk_size);
  if (tokens < 2 || chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--memory_tokens must be >= 2 and --memory_chunk_size >= 1, got ", tokens, " and ", chunk));
  }
  absl::StatusOr<ModelConfig> cfg = BenchModel(tokens);
  if (!cfg.ok()) return cfg.status();
  int64_t checksum = 0;
  const StepData data = MakeData({tokens}, cfg->vocab_size, &checksum);
  std::vector<std::vector<std::string>> table = {
      {"config", "peak device GiB", "activations GiB", "state GiB", "seconds", "result"}};
  // The unchunked run keeps its state on the device (kNever): the point is
  // whether it fits, not what offloading would make of it.
  for (const auto& [cs, offload] : {std::pair{chunk, false}, std::pair{chunk, true},
                                   std::pair{tokens, false}}) {
    const std::string label =
        cs == tokens ? absl::StrCat("unchunked (ChunkSize=", cs, ")")
                     : absl::StrCat("ChunkSize=", cs, " K=1", offload ? ", state offloaded" : "");
    std::fprintf(stderr, "cuda_step_bench: memory %s ...\n", label.c_str());
    CudaEngineOptions o;
    o.precision = ParsePrecision();
    o.offload_state = offload ? StateOffload::kAlways : StateOffload::kNever;
    absl::StatusOr<std::unique_ptr<CudaEngine>> e = CudaEngine::Create(*cfg, 1, o);
    if (!e.ok()) return e.status();
    if (absl::Status s = (*e)->InitRandom(absl::GetFlag(FLAGS_seed)); !s.ok()) return s;
    const double t0 = Now();
    absl::StatusOr<StepResult> r = (*e)->ComputeGradients(data, cs, 1);
    const double dt = Now() - t0;
    if (!r.ok()) {
      table.push_back({label, "-", "-", "-", absl::StrFormat("%.2f", dt),
                       absl::StrCat("does not fit: ", r.status().message().substr(0, 160))});
      json->push_back(absl::StrCat("{\"section\":\"memory\",\"config\":", Quoted(label),
                                   ",\"fits\":false,\"error\":",
                                   Quoted(std::string(r.status().message())), "}"));
      continue;
    }
    table.push_back({label, absl::StrFormat("%.2f", r->peak_device_bytes / kGiB),
                     absl::StrFormat("%.2f", r->peak_activation_bytes / kGiB),
                     absl::StrFormat("%.2f", r->peak_state_bytes / kGiB),
                     absl::StrFormat("%.2f", dt), "fits"});
    json->push_back(absl::StrCat("{\"section\":\"memory\",\"config\":", Quoted(label),
                                 ",\"fits\":true,\"peak_device_bytes\":", r->peak_device_bytes,
                                 ",\"peak_activation_bytes\":", r->peak_activation_bytes,
                                 ",\"peak_state_bytes\":", r->peak_state_bytes, "}"));
  }
  PrintTable(absl::StrCat("Memory: ComputeGradients of one ", tokens, "-token sequence, ",
                          absl::GetFlag(FLAGS_model), ", ", absl::GetFlag(FLAGS_precision),
                          "; peak = the allocator's exact peak (weights, grads, AdamW included)"),
             1, table);
  return absl::OkStatus();
}

int Main() {
  if (!HaveCudaDevice()) {
    std::printf("cuda_step_bench: SKIPPED: no CUDA device\n");
    return 0;
  }
  const std::string prec = absl::GetFlag(FLAGS_precision);
  if (prec != "bf16" && prec != "fp32") {
    std::fprintf(stderr, "cuda_step_bench: --precision must be bf16 or fp32, got '%s'\n",
                 prec.c_str());
    return 2;
  }
  std::vector<std::string> json;
  const std::string sections = absl::GetFlag(FLAGS_sections);
  for (const auto& [name, fn] : {std::pair{"throughput", &RunThroughput},
                                 std::pair{"memory", &RunMemory}}) {
    if (sections.find(name) == std::string::npos) continue;
    if (absl::Status s = fn(&json); !s.ok()) {
      std::fprintf(stderr, "cuda_step_bench: %s: %s\n", name, s.ToString().c_str());
      return 1;
    }
  }
  if (absl::Status s = WriteJsonArray(absl::GetFlag(FLAGS_json), json); !s.ok()) {
    std::fprintf(stderr, "cuda_step_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace chunkflow::engine::cuda

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "One training step of the CUDA engine beside PyTorch eager, and peak device memory of a "
      "long sequence chunked vs unchunked. Needs a GPU; prints SKIPPED without one.");
  absl::ParseCommandLine(argc, argv);
  return chunkflow::engine::cuda::Main();
}
