// The linear layer's host emulation (host_emulation.cc): every op is the CPU
// op of kernels/cpu/linear.h; the bf16 ones round their inputs to bf16 as
// the device path does. The CublasHandle holds no library handle.

#include <cuda_bf16.h>

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/linear.h"
#include "kernels/cuda/linear.h"

namespace chunkflow::kernels::cuda {
namespace {

std::vector<float> Widen(const __nv_bfloat16* x, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = __bfloat162float(x[i]);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// linear.h
// ---------------------------------------------------------------------------

// The bf16 GEMMs below are the CPU op whatever the backend.
struct CublasHandle::Lt {};
CublasHandle::CublasHandle(cublasHandle_t h, cudaStream_t s) : h_(h), stream_(s) {}
CublasHandle::CublasHandle(CublasHandle&& o) noexcept
    : h_(o.h_), stream_(o.stream_), lt_(std::move(o.lt_)) {}
absl::StatusOr<CublasHandle> CublasHandle::Create(cudaStream_t stream,
                                                  const CublasOptions& options) {
  CublasHandle out(nullptr, stream);
  if (RequestedBf16Backend(options) == GemmBackend::kLt) out.lt_ = std::make_unique<Lt>();
  return out;
}
CublasHandle::~CublasHandle() = default;
GemmBackend CublasHandle::bf16_backend() const {
  return lt_ != nullptr ? GemmBackend::kLt : GemmBackend::kGemmEx;
}

absl::Status linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                            int64_t T, int64_t IC, int64_t OC, const CublasHandle&) {
  cpu::linear_forward(out, inp, weight, bias, T, IC, OC);
  return absl::OkStatus();
}
absl::Status linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                             const float* inp, const float* weight, int64_t T, int64_t IC,
                             int64_t OC, const CublasHandle&) {
  cpu::linear_backward(dinp, dweight, dbias, dout, inp, weight, T, IC, OC);
  return absl::OkStatus();
}
absl::Status linear_forward_bf16(float* out, const __nv_bfloat16* inp,
                                 const __nv_bfloat16* weight, const float* bias, int64_t T,
                                 int64_t IC, int64_t OC, const CublasHandle&) {
  const std::vector<float> x = Widen(inp, T * IC), w = Widen(weight, OC * IC);
  cpu::linear_forward(out, x.data(), w.data(), bias, T, IC, OC);
  return absl::OkStatus();
}
absl::Status linear_backward_bf16(float* dinp, float* dweight, float* dbias,
                                  const __nv_bfloat16* dout, const __nv_bfloat16* inp,
                                  const __nv_bfloat16* weight, int64_t T, int64_t IC, int64_t OC,
                                  const CublasHandle&) {
  const std::vector<float> d = Widen(dout, T * OC), x = Widen(inp, T * IC),
                           w = Widen(weight, OC * IC);
  cpu::linear_backward(dinp, dweight, dbias, d.data(), x.data(), w.data(), T, IC, OC);
  return absl::OkStatus();
}

}  // namespace chunkflow::kernels::cuda
