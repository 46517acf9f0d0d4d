// The linear layer's CUDA twin (kernels/cpu/linear.h): y = x W^T + b with W
// stored (OC, IC). Same argument order and gradient contract as the CPU op,
// plus the cuBLAS handle and its stream.
//  - fp32: cublasSgemm in pedantic FP32 math (no TF32), so it can be held to
//    the CPU oracle.
//  - bf16 (mixed precision): cuBLASLt matmuls, bf16 inputs, fp32
//    accumulation and fp32 outputs. Each GEMM shape's descriptors and the
//    algorithm cuBLASLt's heuristic picks for it are made once per handle
//    and kept. cublasGemmEx stays as the fallback (GemmBackend::kGemmEx,
//    chosen by the caller or by CHUNKFLOW_BF16_GEMM=gemmex, or taken when
//    cuBLASLt cannot be loaded or has no algorithm for a shape).
//  - The workspace both use is the caller's (the CUDA engine's allocator
//    holds it, so it counts in the exact peak), never one cuBLAS allocates
//    on its own behind the allocator's back.
//
// Row-major (T, IC) x (IC, OC) is computed as the column-major product of
// the transposed views: out^T = W (x^T), so no data is transposed.
//
//   absl::StatusOr<CublasHandle> h = CublasHandle::Create(stream, {.workspace = ws,
//                                                                   .workspace_bytes = n});
//   linear_forward(y, x, w, b, T, IC, OC, *h);

#ifndef CHUNKFLOW_KERNELS_CUDA_LINEAR_H_
#define CHUNKFLOW_KERNELS_CUDA_LINEAR_H_

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace chunkflow::kernels::cuda {

// What the bf16 GEMMs run on.
enum class GemmBackend {
  kLt,      // cuBLASLt matmuls, algorithms picked once per shape
  kGemmEx,  // cublasGemmEx (the fallback)
};

struct CublasOptions {
  // Device memory for cuBLAS and cuBLASLt on the handle's device, owned by
  // the caller and outliving the handle, 256-byte aligned. Null / 0: none
  // (cuBLASLt then picks algorithms that need none; cuBLAS allocates its own).
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  GemmBackend bf16 = GemmBackend::kLt;
};

// options.bf16, unless the environment's CHUNKFLOW_BF16_GEMM=gemmex forces
// the fallback (an escape hatch on a machine where cuBLASLt misbehaves).
inline GemmBackend RequestedBf16Backend(const CublasOptions& options) {
  const char* env = std::getenv("CHUNKFLOW_BF16_GEMM");
  if (env != nullptr && std::string_view(env) == "gemmex") return GemmBackend::kGemmEx;
  return options.bf16;
}

// A cuBLAS handle (and a cuBLASLt one) bound to a stream, in FP32 (pedantic)
// math mode. One thread at a time.
class CublasHandle {
 public:
  // Errors: INTERNAL naming the cuBLAS status (no device, out of memory);
  // INVALID_ARGUMENT for a workspace not 256-byte aligned.
  static absl::StatusOr<CublasHandle> Create(cudaStream_t stream,
                                             const CublasOptions& options = {});
  CublasHandle(CublasHandle&& o) noexcept;
  CublasHandle& operator=(CublasHandle&&) = delete;
  ~CublasHandle();
  cublasHandle_t get() const { return h_; }
  cudaStream_t stream() const { return stream_; }
  // kGemmEx when asked for, or when cuBLASLt could not be set up.
  GemmBackend bf16_backend() const;

  // cuBLASLt's handle, workspace and per-shape plans (linear.cc).
  struct Lt;
  Lt* lt() const { return lt_.get(); }

 private:
  CublasHandle(cublasHandle_t h, cudaStream_t s);
  cublasHandle_t h_;
  cudaStream_t stream_;
  std::unique_ptr<Lt> lt_;
};

// out[t, o] = sum_i inp[t, i] * weight[o, i] + (bias ? bias[o] : 0).
absl::Status linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                            int64_t T, int64_t IC, int64_t OC, const CublasHandle& h);

// The bf16 path: bf16 inputs and weights, fp32 accumulation and fp32
// outputs / gradients (the master weights and their gradients stay fp32).
// Products of two bf16 values are exact in fp32, so against the fp32 CPU op
// on the same (bf16-rounded) values only the summation order differs.
absl::Status linear_forward_bf16(float* out, const __nv_bfloat16* inp,
                                 const __nv_bfloat16* weight, const float* bias, int64_t T,
                                 int64_t IC, int64_t OC, const CublasHandle& h);
absl::Status linear_backward_bf16(float* dinp, float* dweight, float* dbias,
                                  const __nv_bfloat16* dout, const __nv_bfloat16* inp,
                                  const __nv_bfloat16* weight, int64_t T, int64_t IC, int64_t OC,
                                  const CublasHandle& h);

//   dinp    += dout W        (skipped when dinp is nullptr)
//   dweight += dout^T inp
//   dbias   += sum_t dout[t] (skipped when dbias is nullptr; column_sums in double)
absl::Status linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                             const float* inp, const float* weight, int64_t T, int64_t IC,
                             int64_t OC, const CublasHandle& h);

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_LINEAR_H_
