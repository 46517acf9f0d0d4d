// engine_bench: speed and memory of one training step of the CPU engine.
//
// (a) Throughput. One TrainStep (forward, backward, clipping, AdamW) of a
//     small Qwen2-shaped model on a fixed long-tailed batch, for ChunkFlow
//     configs (ChunkSize with each K of --ks) and the unchunked run
//     (ChunkSize = the longest sequence). Beside them, in the same run, the
//     PyTorch eager implementation of the same model on the same tokens with
//     the same thread count (tools/bench/torch_step.py, run as a child
//     process; its JSON line is read from its stdout). Median of --steps
//     timed steps after --warmup untimed ones.
// (b) Memory. Peak engine bytes (StepResult: total, activations, state) of
//     one ComputeGradients on one sequence of --memory_tokens tokens:
//     unchunked, then ChunkSize --memory_chunk_size with each K of
//     --memory_ks. Every config runs in a fresh child process (this binary
//     re-invoked with --memory_child), so its peak-RSS growth (ru_maxrss after
//     the step minus the RSS before it) is its own and not the maximum of the
//     configs run before it.
//
// Tables go to stdout, progress to stderr; --json=<path> writes both sections.
// Threads: the engine uses omp_get_max_threads() (OMP_NUM_THREADS); PyTorch
// gets the same number through torch.set_num_threads.
//
//   bazel build -c opt //worker/engine:engine_bench
//   OMP_NUM_THREADS=2 bazel-bin/worker/engine/engine_bench --json=/tmp/engine_bench.json

#include <omp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cpu/blas_core.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tools/bench/bench_util.h"
#include "worker/engine/torch_step_args.h"
#include "worker/engine/engine.h"

ABSL_FLAG(std::string, sections, "throughput,memory",
          "Sections to run, comma-separated: throughput, memory");
ABSL_FLAG(std::string, json, "", "Also write both sections' results as JSON to this path");
// Model (both sections; --memory_layers may shorten the memory model).
ABSL_FLAG(int64_t, layers, 4, "Model: decoder layers");
ABSL_FLAG(int64_t, hidden, 256, "Model: hidden size");
ABSL_FLAG(int64_t, intermediate, 704, "Model: MLP intermediate size");
ABSL_FLAG(int64_t, heads, 4, "Model: attention heads (head_dim = hidden / heads)");
ABSL_FLAG(int64_t, kv_heads, 2, "Model: key/value heads (GQA)");
ABSL_FLAG(int64_t, vocab, 8192, "Model: vocabulary size (the LM head is untied)");
ABSL_FLAG(double, rope_theta, 1e6, "Model: RoPE theta");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the weights and of the token stream (shared with PyTorch)");
// (a) Throughput.
ABSL_FLAG(std::string, lengths, "4096,1024,512,512,256,256,128,128,64,32",
          "Throughput: sequence lengths of the batch, comma-separated");
ABSL_FLAG(int32_t, warmup, 1, "Throughput: untimed steps before the timed ones, per config");
ABSL_FLAG(int32_t, steps, 3, "Throughput: timed steps per config (the median is reported)");
ABSL_FLAG(int64_t, chunk_size, 1024, "Throughput: ChunkSize of the ChunkFlow configs");
ABSL_FLAG(std::string, ks, "1,all",
          "Throughput: K of each ChunkFlow config, comma-separated; 'all' keeps every chunk "
          "of the longest chain (K = ceil(longest / chunk_size))");
ABSL_FLAG(std::string, torch_python, "/usr/bin/python3",
          "Throughput: Python that runs the PyTorch baseline; skipped (visibly) when empty or "
          "when it cannot import torch");
ABSL_FLAG(std::string, torch_script, "tools/bench/torch_step.py",
          "Throughput: the PyTorch baseline script; a relative path is also looked up under "
          "$BUILD_WORKSPACE_DIRECTORY (bazel run)");
// (b) Memory.
ABSL_FLAG(int64_t, memory_tokens, 16384, "Memory: tokens of the one sequence");
ABSL_FLAG(int64_t, memory_chunk_size, 1024, "Memory: ChunkSize of the chunked configs");
ABSL_FLAG(std::string, memory_ks, "1,4", "Memory: K of each chunked config, comma-separated");
ABSL_FLAG(int64_t, memory_layers, 0, "Memory: decoder layers; 0 = --layers");
ABSL_FLAG(std::string, memory_child, "",
          "Internal: 'CHUNK_SIZE:K' runs one memory config and prints its JSON line (the "
          "parent re-invokes itself with it, one fresh process per config)");

namespace chunkflow::engine {
namespace {

using namespace ::chunkflow::bench;  // NOLINT: the shared bench helpers

// ---------------------------------------------------------------------------
// Inputs: model shape, tokens, lists
// ---------------------------------------------------------------------------

ModelConfig BenchConfig(int64_t layers, int64_t longest) {
  ModelConfig c;
  c.arch = Architecture::kQwen2;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.hidden_size = absl::GetFlag(FLAGS_hidden);
  c.intermediate_size = absl::GetFlag(FLAGS_intermediate);
  c.num_attention_heads = absl::GetFlag(FLAGS_heads);
  c.num_key_value_heads = absl::GetFlag(FLAGS_kv_heads);
  c.num_hidden_layers = layers;
  c.vocab_size = absl::GetFlag(FLAGS_vocab);
  c.rope_theta = absl::GetFlag(FLAGS_rope_theta);
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = std::max<int64_t>(32768, longest);
  return c;
}

// Sequence i gets id i; one token stream over all sequences in order.
StepData MakeData(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed,
                  int64_t* checksum) {
  StepData data;
  std::vector<std::vector<int32_t>> tokens = SplitMix64Tokens(lengths, vocab, seed, checksum);
  for (size_t i = 0; i < tokens.size(); ++i) {
    SequenceData& s = data.sequences[static_cast<int64_t>(i)];
    s.id = static_cast<int64_t>(i);
    s.tokens = std::move(tokens[i]);
  }
  return data;
}

// K values; "all" becomes the chunks of the longest chain.
absl::StatusOr<std::vector<int32_t>> ParseKs(const std::string& flag, const std::string& text,
                                             int64_t longest, int64_t chunk_size) {
  std::vector<int32_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    if (part == "all") {
      out.push_back(static_cast<int32_t>((longest + chunk_size - 1) / chunk_size));
      continue;
    }
    absl::StatusOr<std::vector<int64_t>> v = ParseInts(flag, std::string(part));
    if (!v.ok()) return v.status();
    out.push_back(static_cast<int32_t>(v->front()));
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("--", flag, " is empty"));
  return out;
}

constexpr double kMiB = 1024.0 * 1024.0;

// The 1-minute load average: timings mean little when other processes
// compete for the cores the benchmark's threads use.
double LoadAverage() {
  std::ifstream in("/proc/loadavg");
  double load = -1;
  in >> load;
  return load;
}

// ---------------------------------------------------------------------------
// Output: aligned tables, child processes, flat JSON lines
// ---------------------------------------------------------------------------

struct NumFormatter {
  void operator()(std::string* out, double v) const { out->append(Num(v)); }
};

std::string ModelJson(const ModelConfig& c) {
  return absl::StrCat("{\"layers\":", c.num_hidden_layers, ",\"hidden\":", c.hidden_size,
                      ",\"intermediate\":", c.intermediate_size,
                      ",\"heads\":", c.num_attention_heads, ",\"kv_heads\":", c.num_key_value_heads,
                      ",\"vocab\":", c.vocab_size, ",\"rope_theta\":", Num(c.rope_theta),
                      ",\"tied\":false}");
}

// ---------------------------------------------------------------------------
// (a) Throughput
// ---------------------------------------------------------------------------

struct ThroughputRow {
  std::string implementation, config;
  int64_t tokens = 0;
  double seconds = 0;                // median step
  std::vector<double> step_seconds;  // every timed step, in order
  double loss = 0;                   // of the last timed step
  std::string note;                  // a skipped or failed baseline: printed instead of numbers
};

// A fresh engine per config; `label` names it in progress lines.
absl::StatusOr<ThroughputRow> TimeEngine(const ModelConfig& cfg, const StepData& data,
                                         int64_t chunk_size, int32_t k, const std::string& label) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(cfg, /*pp=*/1);
  if (!engine.ok()) return engine.status();
  (*engine)->InitRandom(absl::GetFlag(FLAGS_seed));
  TrainOptions opt;
  opt.chunk_size = chunk_size;
  opt.k = k;
  const int32_t warmup = absl::GetFlag(FLAGS_warmup), steps = absl::GetFlag(FLAGS_steps);
  ThroughputRow row;
  row.implementation = "ChunkFlow engine";
  std::vector<double> times;
  int64_t chunks = 0;
  for (int32_t i = 0; i < warmup + steps; ++i) {
    const double t0 = Now();
    absl::StatusOr<StepResult> r = (*engine)->TrainStep(data, opt);
    const double dt = Now() - t0;
    if (!r.ok()) return r.status();
    row.tokens = r->tokens;
    row.loss = r->loss;
    chunks = r->chunks;
    const bool timed = i >= warmup;
    if (timed) times.push_back(dt);
    std::fprintf(stderr, "engine_bench: [throughput] %s: %s %d/%d %.3f s (loss %.4f)\n",
                 label.c_str(), timed ? "step" : "warm-up", timed ? i - warmup + 1 : i + 1,
                 timed ? steps : warmup, dt, r->loss);
  }
  row.seconds = Median(times);
  row.step_seconds = times;
  row.config = absl::StrCat(label, " (", chunks, chunks == 1 ? " chunk)" : " chunks)");
  return row;
}

std::string FindTorchScript() {
  const std::string path = absl::GetFlag(FLAGS_torch_script);
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 || path.empty() || path.front() == '/') return path;
  if (const char* ws = std::getenv("BUILD_WORKSPACE_DIRECTORY")) {
    const std::string alt = absl::StrCat(ws, "/", path);
    if (::stat(alt.c_str(), &st) == 0) return alt;
  }
  return path;
}

// The PyTorch row; a visible note instead of numbers when it cannot run.
ThroughputRow TimeTorch(const ModelConfig& cfg, const std::string& lengths, int threads,
                        int64_t checksum, std::string* json) {
  ThroughputRow row;
  row.implementation = "PyTorch eager";
  const BaselineResult base = RunTorchBaseline(
      absl::GetFlag(FLAGS_torch_python), FindTorchScript(),
      absl::StrCat("--lengths=", lengths, " --seed=", absl::GetFlag(FLAGS_seed),
                   TorchStepModelArgs(cfg), " --threads=", threads,
                   " --warmup=", absl::GetFlag(FLAGS_warmup), " --steps=", absl::GetFlag(FLAGS_steps)),
      checksum, "engine_bench: [throughput]");
  if (!base.note.empty()) {
    row.note = base.note;
    return row;
  }
  const TorchStepResult r = ParseTorchStepResult(base.line);
  row.seconds = r.seconds;
  row.tokens = r.tokens;
  row.loss = r.loss;
  row.config = absl::StrCat("torch ", r.torch_version, ", per-sequence, ", r.attention);
  *json = base.line;
  return row;
}

// Runs section (a); appends its JSON object to `json`.
absl::Status RunThroughput(int threads, std::string* json) {
  const std::string lengths_text = absl::GetFlag(FLAGS_lengths);
  absl::StatusOr<std::vector<int64_t>> lengths = ParseInts("lengths", lengths_text);
  if (!lengths.ok()) return lengths.status();
  const int64_t longest = *std::max_element(lengths->begin(), lengths->end());
  const int64_t chunk = absl::GetFlag(FLAGS_chunk_size);
  if (chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--chunk_size must be >= 1, got ", chunk));
  }
  absl::StatusOr<std::vector<int32_t>> ks = ParseKs("ks", absl::GetFlag(FLAGS_ks), longest, chunk);
  if (!ks.ok()) return ks.status();
  const ModelConfig cfg = BenchConfig(absl::GetFlag(FLAGS_layers), longest);
  int64_t checksum = 0;
  const StepData data = MakeData(*lengths, cfg.vocab_size, absl::GetFlag(FLAGS_seed), &checksum);

  std::vector<ThroughputRow> rows;
  for (int32_t k : *ks) {
    absl::StatusOr<ThroughputRow> r =
        TimeEngine(cfg, data, chunk, k, absl::StrCat("ChunkSize=", chunk, " K=", k));
    if (!r.ok()) return r.status();
    rows.push_back(*r);
  }
  absl::StatusOr<ThroughputRow> unchunked =
      TimeEngine(cfg, data, longest, 1, absl::StrCat("unchunked, ChunkSize=", longest));
  if (!unchunked.ok()) return unchunked.status();
  rows.push_back(*unchunked);
  std::string torch_json;
  const std::string joined = absl::StrJoin(*lengths, ",");
  rows.push_back(TimeTorch(cfg, joined, threads, checksum, &torch_json));
  const ThroughputRow& torch = rows.back();

  std::vector<std::vector<std::string>> table = {
      {"implementation", "config", "tokens", "step s (median)", "tokens/s", "vs PyTorch"}};
  std::vector<std::string> json_rows;
  for (const ThroughputRow& r : rows) {
    if (!r.note.empty()) {
      table.push_back({r.note});
      continue;
    }
    const double tps = r.seconds > 0 ? r.tokens / r.seconds : 0;
    const bool ratio = torch.note.empty() && r.seconds > 0;
    table.push_back({r.implementation, r.config, absl::StrCat(r.tokens),
                     absl::StrFormat("%.3f", r.seconds), absl::StrFormat("%.0f", tps),
                     ratio ? absl::StrFormat("%.2fx", torch.seconds / r.seconds) : "n/a"});
    json_rows.push_back(absl::StrCat(
        "{\"implementation\":", Quoted(r.implementation), ",\"config\":", Quoted(r.config),
        ",\"tokens\":", r.tokens, ",\"step_seconds_median\":", Num(r.seconds),
        ",\"step_seconds\":[", absl::StrJoin(r.step_seconds, ",", NumFormatter()), "]",
        ",\"tokens_per_s\":", Num(tps), ",\"loss\":", Num(r.loss),
        ",\"speedup_vs_torch\":", ratio ? Num(torch.seconds / r.seconds) : "null", "}"));
  }
  PrintTable(absl::StrFormat("Throughput: one training step (TrainStep, AdamW), fp32, %d threads, "
                             "lengths %s; vs PyTorch = PyTorch step s / this step s",
                             threads, joined),
             2, table);
  absl::StrAppend(
      json, "\"throughput\":{\"threads\":", threads, ",\"lengths\":[", joined,
      "],\"seed\":", absl::GetFlag(FLAGS_seed), ",\"warmup\":", absl::GetFlag(FLAGS_warmup),
      ",\"steps\":", absl::GetFlag(FLAGS_steps), ",\"model\":", ModelJson(cfg), ",\"rows\":[",
      absl::StrJoin(json_rows, ","), "],\"torch\":", torch_json.empty() ? "null" : torch_json,
      ",\"torch_note\":", Quoted(torch.note), "}");
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// (b) Memory
// ---------------------------------------------------------------------------

int64_t MemoryLayers() {
  const int64_t l = absl::GetFlag(FLAGS_memory_layers);
  return l > 0 ? l : absl::GetFlag(FLAGS_layers);
}

int64_t CurrentRssKib() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

int64_t PeakRssKib() {
  struct rusage ru;
  ::getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;  // KiB on Linux
}

// The child: one config in this fresh process; prints one JSON line.
int RunMemoryChild(const std::string& spec) {
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  int64_t chunk = 0;
  int32_t k = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &chunk) || !absl::SimpleAtoi(parts[1], &k)) {
    std::fprintf(stderr, "engine_bench: --memory_child='%s' is not CHUNK_SIZE:K\n", spec.c_str());
    return 2;
  }
  const int64_t tokens = absl::GetFlag(FLAGS_memory_tokens);
  const ModelConfig cfg = BenchConfig(MemoryLayers(), tokens);
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Create(cfg, /*pp=*/1);
  if (!engine.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  (*engine)->InitRandom(absl::GetFlag(FLAGS_seed));
  int64_t checksum = 0;
  // A small step first starts the OpenMP threads and OpenBLAS's buffers, so
  // the RSS growth below is the step's own.
  const StepData warm = MakeData({256}, cfg.vocab_size, absl::GetFlag(FLAGS_seed), &checksum);
  const StepData data = MakeData({tokens}, cfg.vocab_size, absl::GetFlag(FLAGS_seed), &checksum);
  absl::StatusOr<StepResult> r = (*engine)->ComputeGradients(warm, 256, 1);
  const int64_t rss_before = CurrentRssKib();
  if (r.ok()) r = (*engine)->ComputeGradients(data, chunk, k);
  const int64_t rss_peak = PeakRssKib();
  if (!r.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n", r.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "{\"peak_bytes\":%lld,\"peak_activation_bytes\":%lld,\"peak_state_bytes\":%lld,"
      "\"seconds\":%.6g,\"chunks\":%lld,\"loss\":%.6g,\"rss_before_kib\":%lld,"
      "\"rss_peak_kib\":%lld}\n",
      static_cast<long long>(r->peak_bytes), static_cast<long long>(r->peak_activation_bytes),
      static_cast<long long>(r->peak_state_bytes), r->seconds, static_cast<long long>(r->chunks),
      r->loss, static_cast<long long>(rss_before), static_cast<long long>(rss_peak));
  return 0;
}

std::string SelfExe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

// Re-invokes this binary for one config; returns its JSON line.
absl::StatusOr<std::string> SpawnMemoryChild(int64_t chunk, int32_t k) {
  const std::string cmd = absl::StrCat(
      ShellQuote(SelfExe()), " --memory_child=", chunk, ":", k,
      " --memory_tokens=", absl::GetFlag(FLAGS_memory_tokens), " --memory_layers=", MemoryLayers(),
      " --hidden=", absl::GetFlag(FLAGS_hidden),
      " --intermediate=", absl::GetFlag(FLAGS_intermediate),
      " --heads=", absl::GetFlag(FLAGS_heads), " --kv_heads=", absl::GetFlag(FLAGS_kv_heads),
      " --vocab=", absl::GetFlag(FLAGS_vocab),
      " --rope_theta=", Num(absl::GetFlag(FLAGS_rope_theta)),
      " --seed=", absl::GetFlag(FLAGS_seed));
  absl::StatusOr<std::string> out = RunChild(cmd);
  if (!out.ok()) return out.status();
  const std::string line = LastJsonLine(*out);
  if (line.empty()) return absl::InternalError(absl::StrCat("no JSON result from: ", cmd));
  return line;
}

// Runs section (b); appends its JSON object to `json`.
absl::Status RunMemory(int threads, std::string* json) {
  const int64_t tokens = absl::GetFlag(FLAGS_memory_tokens);
  const int64_t chunk = absl::GetFlag(FLAGS_memory_chunk_size);
  if (tokens < 2 || chunk < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--memory_tokens must be >= 2 and "
                     "--memory_chunk_size >= 1, got ",
                     tokens, " and ", chunk));
  }
  absl::StatusOr<std::vector<int32_t>> ks =
      ParseKs("memory_ks", absl::GetFlag(FLAGS_memory_ks), tokens, chunk);
  if (!ks.ok()) return ks.status();
  std::vector<std::pair<int64_t, int32_t>> configs = {{tokens, 1}};
  for (int32_t k : *ks) configs.push_back({chunk, k});

  std::vector<std::vector<std::string>> table = {
      {"config", "chunks", "peak MiB", "activations MiB", "state MiB", "step s", "RSS growth MiB"}};
  std::vector<std::string> json_rows;
  for (const auto& [c, k] : configs) {
    const std::string label = c == tokens ? absl::StrCat("unchunked, ChunkSize=", c)
                                          : absl::StrCat("ChunkSize=", c, " K=", k);
    std::fprintf(stderr, "engine_bench: [memory] %s: %lld tokens in a fresh child process...\n",
                 label.c_str(), static_cast<long long>(tokens));
    const double t0 = Now();
    absl::StatusOr<std::string> line = SpawnMemoryChild(c, k);
    if (!line.ok()) return line.status();
    std::fprintf(stderr, "engine_bench: [memory] %s: done in %.1f s\n", label.c_str(), Now() - t0);
    auto get = [&](const char* key) { return JsonNumber(*line, key).value_or(0); };
    const double rss = (get("rss_peak_kib") - get("rss_before_kib")) / 1024.0;
    table.push_back({label, absl::StrCat(static_cast<int64_t>(get("chunks"))),
                     absl::StrFormat("%.1f", get("peak_bytes") / kMiB),
                     absl::StrFormat("%.1f", get("peak_activation_bytes") / kMiB),
                     absl::StrFormat("%.1f", get("peak_state_bytes") / kMiB),
                     absl::StrFormat("%.2f", get("seconds")), absl::StrFormat("%.1f", rss)});
    json_rows.push_back(absl::StrCat("{\"config\":", Quoted(label), ",\"chunk_size\":", c,
                                     ",\"k\":", k, ",\"result\":", *line,
                                     ",\"rss_growth_mib\":", Num(rss), "}"));
  }
  const ModelConfig cfg = BenchConfig(MemoryLayers(), tokens);
  PrintTable(
      absl::StrFormat("Memory: one ComputeGradients on one sequence of %d tokens, %d layers, "
                      "%d threads; engine-counted peaks (fp32 buffers), and the step's "
                      "peak-RSS growth measured in a fresh process per config",
                      tokens, cfg.num_hidden_layers, threads),
      1, table);
  absl::StrAppend(json, "\"memory\":{\"threads\":", threads, ",\"tokens\":", tokens,
                  ",\"model\":", ModelJson(cfg), ",\"rows\":[", absl::StrJoin(json_rows, ","),
                  "]}");
  return absl::OkStatus();
}

}  // namespace
}  // namespace chunkflow::engine

int main(int argc, char** argv) {
  chunkflow::kernels::cpu::SelectBlasCore(argv);  // before anything else: may re-exec
  absl::SetProgramUsageMessage(
      "speed and memory of one training step of the CPU engine, beside PyTorch eager.\n"
      "  OMP_NUM_THREADS=2 bazel-bin/worker/engine/engine_bench [--json=out.json]");
  absl::ParseCommandLine(argc, argv);
  namespace e = chunkflow::engine;
  const std::string child = absl::GetFlag(FLAGS_memory_child);
  if (!child.empty()) return e::RunMemoryChild(child);

  const int threads = omp_get_max_threads();
  const std::string sections = absl::GetFlag(FLAGS_sections);
  const double load_start = e::LoadAverage();
  std::printf(
      "engine_bench: %d OpenMP threads, %ld online cores, OpenBLAS kernels %s, 1-min load "
      "average %.2f at start (timings are noisy when other processes use the cores)\n",
      threads, ::sysconf(_SC_NPROCESSORS_ONLN),
      chunkflow::kernels::cpu::BlasCoreName().c_str(), load_start);
  std::string json = absl::StrCat("{\"blas_core\":\"", chunkflow::kernels::cpu::BlasCoreName(),
                                  "\",\"load_average_start\":", e::Num(load_start), ",");
  for (absl::string_view s : absl::StrSplit(sections, ',', absl::SkipEmpty())) {
    absl::Status st;
    if (s == "throughput") {
      st = e::RunThroughput(threads, &json);
    } else if (s == "memory") {
      st = e::RunMemory(threads, &json);
    } else {
      st = absl::InvalidArgumentError(
          absl::StrCat("--sections: unknown section '", s, "' (known: throughput, memory)"));
    }
    if (!st.ok()) {
      std::fprintf(stderr, "engine_bench: error: %s\n", st.ToString().c_str());
      return 1;
    }
    json += ",";
  }
  const double load_end = e::LoadAverage();
  std::printf("\nengine_bench: 1-min load average %.2f at the end\n", load_end);
  json += absl::StrCat("\"load_average_end\":", e::Num(load_end), "}\n");
  const std::string path = absl::GetFlag(FLAGS_json);
  if (!path.empty()) {
    std::ofstream out(path);
    out << json;
    if (!out) {
      std::fprintf(stderr, "engine_bench: error: cannot write --json=%s\n", path.c_str());
      return 1;
    }
    std::fprintf(stderr, "engine_bench: wrote %s\n", path.c_str());
  }
  return 0;
}
