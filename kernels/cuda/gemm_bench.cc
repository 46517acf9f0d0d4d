// gemm_bench: the CUDA linear layer's bf16 GEMMs (linear.h: cuBLASLt with a
// 32 MiB workspace as the engine runs them, bf16 inputs, fp32 accumulation
// and fp32 outputs / gradients) on the Qwen2-0.5B projections at --tokens
// rows, beside the cublasGemmEx fallback and torch.matmul in bf16 (bf16
// outputs) in the same run (tools/bench/torch_gemm.py). Forward: y = x W^T;
// backward: dx += dy W and dW += dy^T x. TFLOP/s = 2 T IC OC per product.
//
//   bazel build -c opt //kernels/cuda:gemm_bench          (any machine)
//   bazel-bin/kernels/cuda/gemm_bench --json=/tmp/gemm.json   (GPU)

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/bench_timing.h"
#include "kernels/cuda/status.h"
#include "tools/bench/bench_util.h"

ABSL_FLAG(int64_t, tokens, 8192, "Rows (tokens of a chunk)");
ABSL_FLAG(std::string, shapes, "896,896;896,128;896,4864;4864,896;896,151936",
          "IC,OC pairs, ';'-separated (default: Qwen2-0.5B's q, k/v, gate/up, down, LM head)");
ABSL_FLAG(int32_t, iters, 20, "Timed calls");
ABSL_FLAG(int32_t, warmup, 5, "Untimed calls first");
ABSL_FLAG(std::string, torch_python, "python3", "Python with torch; empty skips PyTorch");
ABSL_FLAG(std::string, torch_script, "tools/bench/torch_gemm.py", "The PyTorch script");
ABSL_FLAG(std::string, json, "", "Also write the rows as JSON to this path");

namespace chunkflow::kernels::cuda {
namespace {

using namespace ::chunkflow::bench;  // NOLINT: the shared bench helpers

absl::StatusOr<double> Time(const std::function<absl::Status()>& fn) {
  return TimeMs(fn, absl::GetFlag(FLAGS_warmup), absl::GetFlag(FLAGS_iters));
}

// The table, with both backends' handles on `workspace`.
int Run(int64_t T, const std::vector<std::pair<int64_t, int64_t>>& shapes,
        const std::map<std::string, std::pair<double, double>>& torch, const std::string& note,
        void* workspace, size_t workspace_bytes);

int Main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("gemm_bench: SKIPPED: no CUDA device\n");
    return 0;
  }
  const int64_t T = absl::GetFlag(FLAGS_tokens);
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_shapes), ';', absl::SkipEmpty())) {
    absl::StatusOr<std::vector<int64_t>> v = ParseInts("shapes", std::string(s));
    if (!v.ok() || v->size() != 2) {
      std::fprintf(stderr, "gemm_bench: --shapes: '%s' is not IC,OC\n", std::string(s).c_str());
      return 2;
    }
    shapes.push_back({(*v)[0], (*v)[1]});
  }
  // PyTorch first (its own process, its own allocations).
  std::map<std::string, std::pair<double, double>> torch;
  std::string note = "PyTorch: skipped (--torch_python is empty)";
  if (const std::string py = absl::GetFlag(FLAGS_torch_python); !py.empty()) {
    std::vector<std::string> spec;
    for (auto [ic, oc] : shapes) spec.push_back(absl::StrCat(T, ",", ic, ",", oc));
    const std::string cmd = absl::StrCat(
        ShellQuote(py), " ", ShellQuote(absl::GetFlag(FLAGS_torch_script)), " --shapes=",
        ShellQuote(absl::StrJoin(spec, ";")), " --iters=", absl::GetFlag(FLAGS_iters),
        " --warmup=", absl::GetFlag(FLAGS_warmup));
    absl::StatusOr<std::string> out = RunChild(cmd);
    note = out.ok() ? "PyTorch: failed (no JSON result)"
                    : absl::StrCat("PyTorch: failed (", out.status().message(), ")");
    if (out.ok()) {
      for (absl::string_view line : absl::StrSplit(*out, '\n')) {
        if (line.empty() || line.front() != '{') continue;
        const std::string l(line);
        torch[JsonStringValue(l, "shape")] = {JsonNumber(l, "fwd_ms").value_or(-1),
                                              JsonNumber(l, "bwd_ms").value_or(-1)};
        note = absl::StrCat("torch ", JsonStringValue(l, "torch_version"), " matmul, bf16 out");
      }
    }
  }
  constexpr size_t kWorkspace = size_t{32} << 20;  // the engine's (device.h)
  void* workspace = nullptr;
  cudaMalloc(&workspace, kWorkspace);
  const int rc = Run(T, shapes, torch, note, workspace, kWorkspace);
  cudaFree(workspace);  // after the handles that used it
  return rc;
}

int Run(int64_t T, const std::vector<std::pair<int64_t, int64_t>>& shapes,
        const std::map<std::string, std::pair<double, double>>& torch, const std::string& note,
        void* workspace, size_t workspace_bytes) {
  CublasOptions lt_options, ex_options;
  lt_options.workspace = ex_options.workspace = workspace;
  lt_options.workspace_bytes = ex_options.workspace_bytes = workspace_bytes;
  ex_options.bf16 = GemmBackend::kGemmEx;
  absl::StatusOr<CublasHandle> h = CublasHandle::Create(nullptr, lt_options);
  absl::StatusOr<CublasHandle> hx = CublasHandle::Create(nullptr, ex_options);
  if (!h.ok() || !hx.ok()) {
    std::fprintf(stderr, "gemm_bench: %s\n", (!h.ok() ? h : hx).status().ToString().c_str());
    return 1;
  }
  const char* ours = h->bf16_backend() == GemmBackend::kLt ? "cuBLASLt" : "cublasGemmEx";
  std::vector<std::vector<std::string>> table = {
      {"T x IC -> OC", "ours fwd ms", "TFLOP/s", "torch fwd ms", "TFLOP/s", "ours bwd ms",
       "TFLOP/s", "torch bwd ms", "TFLOP/s", "fwd+bwd vs PyTorch", "GemmEx fwd+bwd ms"}};
  std::vector<std::string> json;
  for (auto [IC, OC] : shapes) {
    __nv_bfloat16 *x, *w, *dy;
    float *y, *dx, *dw;
    cudaMalloc(reinterpret_cast<void**>(&x), T * IC * 2);
    cudaMalloc(reinterpret_cast<void**>(&w), OC * IC * 2);
    cudaMalloc(reinterpret_cast<void**>(&dy), T * OC * 2);
    cudaMalloc(reinterpret_cast<void**>(&y), T * OC * 4);
    cudaMalloc(reinterpret_cast<void**>(&dx), T * IC * 4);
    cudaMalloc(reinterpret_cast<void**>(&dw), OC * IC * 4);
    cudaMemset(x, 0x3c, T * IC * 2);  // bf16 0x3c3c ~ 0.0115: finite values
    cudaMemset(w, 0x3c, OC * IC * 2);
    cudaMemset(dy, 0x3c, T * OC * 2);
    cudaMemset(dx, 0, T * IC * 4);
    cudaMemset(dw, 0, OC * IC * 4);
    absl::StatusOr<double> f = Time([&] { return linear_forward_bf16(y, x, w, nullptr, T, IC, OC, *h); });
    absl::StatusOr<double> b = Time(
        [&] { return linear_backward_bf16(dx, dw, nullptr, dy, x, w, T, IC, OC, *h); });
    absl::StatusOr<double> xf =
        Time([&] { return linear_forward_bf16(y, x, w, nullptr, T, IC, OC, *hx); });
    absl::StatusOr<double> xb = Time(
        [&] { return linear_backward_bf16(dx, dw, nullptr, dy, x, w, T, IC, OC, *hx); });
    cudaFree(x);
    cudaFree(w);
    cudaFree(dy);
    cudaFree(y);
    cudaFree(dx);
    cudaFree(dw);
    for (const absl::StatusOr<double>* r : {&f, &b, &xf, &xb}) {
      if (!r->ok()) {
        std::fprintf(stderr, "gemm_bench: %s\n", r->status().ToString().c_str());
        return 1;
      }
    }
    const double flop = 2.0 * T * IC * OC;
    auto tf = [](double fl, double ms) { return ms > 0 ? fl / (ms * 1e-3) / 1e12 : 0.0; };
    const std::string key = absl::StrCat(T, ",", IC, ",", OC);
    auto it = torch.find(key);
    const bool have = it != torch.end() && it->second.first > 0;
    table.push_back(
        {absl::StrCat(T, " x ", IC, " -> ", OC), absl::StrFormat("%.3f", *f),
         absl::StrFormat("%.0f", tf(flop, *f)),
         have ? absl::StrFormat("%.3f", it->second.first) : "n/a",
         have ? absl::StrFormat("%.0f", tf(flop, it->second.first)) : "",
         absl::StrFormat("%.3f", *b), absl::StrFormat("%.0f", tf(2 * flop, *b)),
         have ? absl::StrFormat("%.3f", it->second.second) : "n/a",
         have ? absl::StrFormat("%.0f", tf(2 * flop, it->second.second)) : "",
         have ? absl::StrFormat("%.2fx", (it->second.first + it->second.second) / (*f + *b)) : "",
         absl::StrFormat("%.3f", *xf + *xb)});
    json.push_back(absl::StrCat("{\"shape\":", Quoted(key), ",\"fwd_ms\":", Num(*f),
                                ",\"bwd_ms\":", Num(*b), ",\"torch_fwd_ms\":",
                                Num(have ? it->second.first : -1), ",\"torch_bwd_ms\":",
                                Num(have ? it->second.second : -1), ",\"gemmex_fwd_ms\":",
                                Num(*xf), ",\"gemmex_bwd_ms\":", Num(*xb), "}"));
  }
  PrintTable(absl::StrCat("bf16 GEMMs of the linear layer (ours: ", ours,
                          ", fp32 outputs and gradients); ", note),
             1, table);
  if (absl::Status s = WriteJsonArray(absl::GetFlag(FLAGS_json), json); !s.ok()) {
    std::fprintf(stderr, "gemm_bench: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace chunkflow::kernels::cuda

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("The bf16 linear-layer GEMMs beside torch.matmul. Needs a GPU.");
  absl::ParseCommandLine(argc, argv);
  return chunkflow::kernels::cuda::Main();
}
