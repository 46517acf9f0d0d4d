// The linear layer's CUDA twin (kernels/cpu/linear.h): y = x W^T + b with W
// stored (OC, IC), fp32 GEMMs through cuBLAS (FP32 math mode: no TF32, so it
// can be held to the CPU oracle; the bf16 cuBLASLt path comes with mixed
// precision). Same argument order and gradient contract as the CPU op, plus
// the cuBLAS handle and stream.
//
// Row-major (T, IC) x (IC, OC) is computed as the column-major product of
// the transposed views: out^T = W (x^T), so no data is transposed.
//
//   absl::StatusOr<CublasHandle> h = CublasHandle::Create(stream);
//   linear_forward(y, x, w, b, T, IC, OC, *h);

#ifndef CHUNKFLOW_KERNELS_CUDA_LINEAR_H_
#define CHUNKFLOW_KERNELS_CUDA_LINEAR_H_

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace chunkflow::kernels::cuda {

// A cuBLAS handle bound to a stream, in FP32 (pedantic) math mode.
class CublasHandle {
 public:
  // Errors: INTERNAL naming the cuBLAS status (no device, out of memory).
  static absl::StatusOr<CublasHandle> Create(cudaStream_t stream);
  CublasHandle(CublasHandle&& o) noexcept : h_(o.h_), stream_(o.stream_) { o.h_ = nullptr; }
  CublasHandle& operator=(CublasHandle&&) = delete;
  ~CublasHandle();
  cublasHandle_t get() const { return h_; }
  cudaStream_t stream() const { return stream_; }

 private:
  CublasHandle(cublasHandle_t h, cudaStream_t s) : h_(h), stream_(s) {}
  cublasHandle_t h_;
  cudaStream_t stream_;
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
