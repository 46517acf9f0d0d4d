// attention_bench: causal GQA attention forward and forward+backward of the
// flash-style kernel (flash_attention.h), the reference kernel
// (attention.h, up to --reference_max tokens: it is slow by design) and, in
// the same run on the same GPU, PyTorch's scaled_dot_product_attention with
// its flash backend in bf16 (tools/bench/torch_attention.py, a child
// process). One sequence of T tokens per row (offset 0); then ChunkFlow's own
// shape: the last --chunk-token chunk of a sequence, attending to a prefix of
// the earlier chunks' K/V (no PyTorch counterpart: SDPA's causal mask is not
// offset).
//
// FLOPs: forward 4 x H x D x (causal query-key pairs); forward+backward 3.5x
// the forward (FlashAttention's convention). Our kernels read fp32 Q/K/V and
// round them to bf16 (the staged copies, flash_attention.h), their
// conversion included in the times; PyTorch reads bf16.
//
// --variants adds flash rows with one of the kernels' knobs changed, in the
// same run: staging_off (CHUNKFLOW_FLASH_STAGING=0: fp32 tiles converted as
// they load, no cp.async), splits1 (CHUNKFLOW_FLASH_DKDV_SPLITS=1: one dk/dv
// block per key tile and kv head), warps4 (CHUNKFLOW_FLASH_QUERY_WARPS=4:
// 64-row query tiles). The plain flash row runs with the environment as
// it is.
//
//   bazel build -c opt //kernels/cuda:attention_bench      (any machine)
//   bazel-bin/kernels/cuda/attention_bench --json=/tmp/attn.json   (GPU)

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/bench_timing.h"
#include "kernels/cuda/status.h"
#include "tools/bench/bench_util.h"

ABSL_FLAG(std::string, lengths, "2048,8192,32768", "Sequence lengths, comma-separated");
ABSL_FLAG(int64_t, heads, 14, "Query heads (Qwen2-0.5B: 14)");
ABSL_FLAG(int64_t, kv_heads, 2, "Key/value heads");
ABSL_FLAG(int64_t, head_dim, 64, "Head dim");
ABSL_FLAG(int64_t, chunk, 8192, "ChunkFlow row: chunk tokens (its prefix: the longest length minus chunk)");
ABSL_FLAG(int64_t, reference_max, 8192, "Time the reference kernel up to this length");
ABSL_FLAG(int32_t, iters, 10, "Timed calls per measurement");
ABSL_FLAG(int32_t, warmup, 3, "Untimed calls first");
ABSL_FLAG(std::string, torch_python, "python3", "Python with torch; empty skips the PyTorch rows");
ABSL_FLAG(std::string, torch_script, "tools/bench/torch_attention.py", "The PyTorch script");
ABSL_FLAG(std::string, json, "", "Also write the rows as JSON to this path");
ABSL_FLAG(std::string, variants, "staging_off,splits1",
          "Extra flash rows, each with one knob changed: staging_off, splits1, warps4 "
          "(comma-separated; empty: none)");

namespace chunkflow::kernels::cuda {
namespace {

using namespace ::chunkflow::bench;  // NOLINT: the shared bench helpers

struct Buf {
  float* p = nullptr;
  explicit Buf(int64_t n, uint64_t seed) {
    cudaMalloc(reinterpret_cast<void**>(&p), static_cast<size_t>(n) * 4);
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::normal_distribution<float> d;
    std::vector<float> h(static_cast<size_t>(n));
    for (float& x : h) x = d(rng);
    cudaMemcpy(p, h.data(), h.size() * 4, cudaMemcpyHostToDevice);
  }
  ~Buf() { cudaFree(p); }
};

absl::StatusOr<double> Time(const std::function<absl::Status()>& fn) {
  return TimeMs(fn, absl::GetFlag(FLAGS_warmup), absl::GetFlag(FLAGS_iters));
}

struct Result {
  double fwd_ms = -1, fwdbwd_ms = -1;
};

// One segment of `length` queries after `offset` prefix keys.
absl::StatusOr<Result> Measure(bool flash, int64_t length, int64_t offset) {
  const int64_t H = absl::GetFlag(FLAGS_heads), Hk = absl::GetFlag(FLAGS_kv_heads),
                D = absl::GetFlag(FLAGS_head_dim);
  const int64_t keys = offset + length;
  Buf q(length * H * D, 1), k(keys * Hk * D, 2), v(keys * Hk * D, 3), dout(length * H * D, 4),
      out(length * H * D, 5), lse(length * H, 6), dq(length * H * D, 7), dk(keys * Hk * D, 8),
      dv(keys * Hk * D, 9);
  AttentionSegment seg{0, length, offset, k.p, v.p, dk.p, dv.p};
  const absl::StatusOr<int64_t> ws_floats =
      flash_attention_backward_workspace(&seg, 1, H, Hk, D, length);
  if (!ws_floats.ok()) return ws_floats.status();
  const absl::StatusOr<int64_t> fwd_floats = flash_attention_forward_workspace(&seg, 1, H, Hk, D);
  if (!fwd_floats.ok()) return fwd_floats.status();
  Buf workspace(std::max(*ws_floats, *fwd_floats), 10);  // the forward's and the backward's
  auto fwd = [&]() -> absl::Status {
    return flash ? flash_attention_forward(out.p, lse.p, q.p, &seg, 1, H, Hk, D, workspace.p,
                                           *fwd_floats, nullptr)
                 : attention_forward(out.p, lse.p, q.p, &seg, 1, H, Hk, D, nullptr);
  };
  auto fwdbwd = [&]() -> absl::Status {
    if (absl::Status s = fwd(); !s.ok()) return s;
    return flash ? flash_attention_backward(dq.p, &seg, 1, dout.p, q.p, out.p, lse.p, H, Hk, D,
                                            length, workspace.p, *ws_floats, nullptr)
                 : attention_backward(dq.p, &seg, 1, dout.p, q.p, out.p, lse.p, H, Hk, D, nullptr);
  };
  Result r;
  absl::StatusOr<double> f = Time(fwd);
  if (!f.ok()) return f.status();
  r.fwd_ms = *f;
  absl::StatusOr<double> fb = Time(fwdbwd);
  if (!fb.ok()) return fb.status();
  r.fwdbwd_ms = *fb;
  return r;
}

// PyTorch results by length (empty on skip, with *note set).
std::map<int64_t, Result> RunTorch(const std::vector<int64_t>& lengths, std::string* note) {
  std::map<int64_t, Result> out;
  const std::string python = absl::GetFlag(FLAGS_torch_python);
  if (python.empty()) {
    *note = "PyTorch: skipped (--torch_python is empty)";
    return out;
  }
  const std::string cmd = absl::StrCat(
      ShellQuote(python), " ", ShellQuote(absl::GetFlag(FLAGS_torch_script)),
      " --lengths=", absl::StrJoin(lengths, ","), " --heads=", absl::GetFlag(FLAGS_heads),
      " --kv_heads=", absl::GetFlag(FLAGS_kv_heads), " --head_dim=", absl::GetFlag(FLAGS_head_dim),
      " --iters=", absl::GetFlag(FLAGS_iters), " --warmup=", absl::GetFlag(FLAGS_warmup));
  std::fprintf(stderr, "attention_bench: PyTorch: %s\n", cmd.c_str());
  absl::StatusOr<std::string> text = RunChild(cmd);
  if (!text.ok()) {
    *note = absl::StrCat("PyTorch: failed (", text.status().message(), ")");
    return out;
  }
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    if (line.empty() || line.front() != '{') continue;
    const std::string l(line);
    const auto t = JsonNumber(l, "length");
    if (!t) continue;
    out[static_cast<int64_t>(*t)] = {JsonNumber(l, "fwd_ms").value_or(-1),
                                     JsonNumber(l, "fwdbwd_ms").value_or(-1)};
    *note = absl::StrCat("torch ", JsonStringValue(l, "torch_version"), ", ",
                         JsonStringValue(l, "backend"), ", bf16");
  }
  if (out.empty()) *note = "PyTorch: failed (no JSON result)";
  return out;
}

// A flash row with one environment knob changed for its measurement.
struct Variant {
  std::string name;  // as --variants names it
  const char* var;
  const char* value;
};

absl::StatusOr<std::vector<Variant>> ParseVariants(const std::string& list) {
  const std::vector<Variant> known = {{"staging_off", "CHUNKFLOW_FLASH_STAGING", "0"},
                                      {"splits1", "CHUNKFLOW_FLASH_DKDV_SPLITS", "1"},
                                      {"warps4", "CHUNKFLOW_FLASH_QUERY_WARPS", "4"}};
  std::vector<Variant> out;
  for (absl::string_view name : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    bool found = false;
    for (const Variant& v : known) {
      if (v.name == name) {
        out.push_back(v);
        found = true;
      }
    }
    if (!found) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--variants: unknown '", name, "' (known: staging_off, splits1, warps4)"));
    }
  }
  return out;
}

// Measure(true, ...) with v.var = v.value, the old value back after.
absl::StatusOr<Result> MeasureVariant(const Variant& v, int64_t length, int64_t offset) {
  const char* old = std::getenv(v.var);
  const std::string saved = old == nullptr ? "" : old;
  setenv(v.var, v.value, 1);
  absl::StatusOr<Result> r = Measure(true, length, offset);
  if (old == nullptr) {
    unsetenv(v.var);
  } else {
    setenv(v.var, saved.c_str(), 1);
  }
  return r;
}

int Main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("attention_bench: SKIPPED: no CUDA device\n");
    return 0;
  }
  absl::StatusOr<std::vector<int64_t>> lengths = ParseInts("lengths", absl::GetFlag(FLAGS_lengths));
  if (!lengths.ok()) {
    std::fprintf(stderr, "attention_bench: %s\n", lengths.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<std::vector<Variant>> variants = ParseVariants(absl::GetFlag(FLAGS_variants));
  if (!variants.ok()) {
    std::fprintf(stderr, "attention_bench: %s\n", variants.status().ToString().c_str());
    return 2;
  }
  const int64_t H = absl::GetFlag(FLAGS_heads), D = absl::GetFlag(FLAGS_head_dim);
  auto tflops = [&](double pairs, double ms, double factor) {
    return ms > 0 ? factor * 4.0 * H * D * pairs / (ms * 1e-3) / 1e12 : 0.0;
  };
  std::string torch_note;
  const std::map<int64_t, Result> torch = RunTorch(*lengths, &torch_note);
  std::vector<std::vector<std::string>> table = {{"kernel", "queries", "prefix", "fwd ms",
                                                  "fwd TFLOP/s", "fwd+bwd ms", "fwd+bwd TFLOP/s",
                                                  "fwd+bwd vs PyTorch"}};
  std::vector<std::string> json;
  auto add = [&](const std::string& kernel, int64_t len, int64_t offset, const Result& r,
                 const Result* ref) {
    const double pairs = static_cast<double>(len) * offset + 0.5 * len * (len + 1.0);
    table.push_back({kernel, absl::StrCat(len), absl::StrCat(offset),
                     absl::StrFormat("%.3f", r.fwd_ms),
                     absl::StrFormat("%.1f", tflops(pairs, r.fwd_ms, 1)),
                     absl::StrFormat("%.3f", r.fwdbwd_ms),
                     absl::StrFormat("%.1f", tflops(pairs, r.fwdbwd_ms, 3.5)),
                     ref != nullptr && r.fwdbwd_ms > 0
                         ? absl::StrFormat("%.2fx", ref->fwdbwd_ms / r.fwdbwd_ms)
                         : ""});
    json.push_back(absl::StrCat("{\"kernel\":", Quoted(kernel), ",\"queries\":", len,
                                ",\"prefix\":", offset, ",\"fwd_ms\":", Num(r.fwd_ms),
                                ",\"fwdbwd_ms\":", Num(r.fwdbwd_ms), "}"));
  };
  for (int64_t len : *lengths) {
    std::fprintf(stderr, "attention_bench: T=%lld\n", static_cast<long long>(len));
    auto it = torch.find(len);
    const Result* ref = it == torch.end() ? nullptr : &it->second;
    if (ref != nullptr) add("PyTorch SDPA", len, 0, *ref, ref);
    absl::StatusOr<Result> f = Measure(true, len, 0);
    if (!f.ok()) {
      std::fprintf(stderr, "attention_bench: flash: %s\n", f.status().ToString().c_str());
      return 1;
    }
    add("ChunkFlow flash", len, 0, *f, ref);
    for (const Variant& v : *variants) {
      absl::StatusOr<Result> fv = MeasureVariant(v, len, 0);
      if (!fv.ok()) {
        std::fprintf(stderr, "attention_bench: flash %s: %s\n", v.name.c_str(),
                     fv.status().ToString().c_str());
        return 1;
      }
      add(absl::StrCat("ChunkFlow flash, ", v.name), len, 0, *fv, ref);
    }
    if (len <= absl::GetFlag(FLAGS_reference_max)) {
      absl::StatusOr<Result> r = Measure(false, len, 0);
      if (!r.ok()) {
        std::fprintf(stderr, "attention_bench: reference: %s\n", r.status().ToString().c_str());
        return 1;
      }
      add("ChunkFlow reference", len, 0, *r, ref);
    }
  }
  const int64_t longest = *std::max_element(lengths->begin(), lengths->end());
  const int64_t chunk = absl::GetFlag(FLAGS_chunk);
  if (chunk > 0 && chunk < longest) {
    absl::StatusOr<Result> f = Measure(true, chunk, longest - chunk);
    if (!f.ok()) {
      std::fprintf(stderr, "attention_bench: flash, last chunk: %s\n",
                   f.status().ToString().c_str());
      return 1;
    }
    add("ChunkFlow flash (last chunk)", chunk, longest - chunk, *f, nullptr);
    for (const Variant& v : *variants) {
      absl::StatusOr<Result> fv = MeasureVariant(v, chunk, longest - chunk);
      if (!fv.ok()) {
        std::fprintf(stderr, "attention_bench: flash %s, last chunk: %s\n", v.name.c_str(),
                     fv.status().ToString().c_str());
        return 1;
      }
      add(absl::StrCat("ChunkFlow flash (last chunk), ", v.name), chunk, longest - chunk, *fv,
          nullptr);
    }
  }
  PrintTable(absl::StrCat("Causal GQA attention, H=", H, " Hk=", absl::GetFlag(FLAGS_kv_heads),
                          " D=", D, "; ", torch_note.empty() ? "PyTorch: n/a" : torch_note,
                          "; vs PyTorch = PyTorch ms / this ms"),
             1, table);
  if (absl::Status s = WriteJsonArray(absl::GetFlag(FLAGS_json), json); !s.ok()) {
    std::fprintf(stderr, "attention_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace chunkflow::kernels::cuda

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Flash and reference attention kernels beside PyTorch SDPA (flash, bf16). Needs a GPU.");
  absl::ParseCommandLine(argc, argv);
  return chunkflow::kernels::cuda::Main();
}
