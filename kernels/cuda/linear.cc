#include "kernels/cuda/linear.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/status.h"

namespace chunkflow::kernels::cuda {
namespace {

absl::Status Cublas(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cublasGetStatusName(s), ": ",
                                          cublasGetStatusString(s)));
}

absl::Status CheckDims(int64_t T, int64_t IC, int64_t OC, const char* what) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (T < 0 || IC < 1 || OC < 1 || T > kMax || IC > kMax || OC > kMax) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": T ", T, ", IC ", IC, ", OC ", OC,
                                                   " (need T >= 0, IC, OC >= 1, each < 2^31)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CublasHandle> CublasHandle::Create(cudaStream_t stream) {
  cublasHandle_t h = nullptr;
  if (absl::Status s = Cublas(cublasCreate(&h), "cublasCreate"); !s.ok()) return s;
  CublasHandle out(h, stream);
  if (absl::Status s = Cublas(cublasSetStream(h, stream), "cublasSetStream"); !s.ok()) return s;
  // No TF32: the fp32 path is held to the CPU oracle.
  if (absl::Status s = Cublas(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
      !s.ok()) {
    return s;
  }
  return out;
}

CublasHandle::~CublasHandle() {
  if (h_ != nullptr) cublasDestroy(h_);
}

absl::Status linear_forward(float* out, const float* inp, const float* weight, const float* bias,
                            int64_t T, int64_t IC, int64_t OC, const CublasHandle& h) {
  if (absl::Status s = CheckDims(T, IC, OC, "linear_forward"); !s.ok()) return s;
  if (T == 0) return absl::OkStatus();
  float beta = 0.0f;
  if (bias != nullptr) {
    if (absl::Status s = CudaCheck(broadcast_rows(out, bias, T, OC, h.stream()), "linear_forward bias");
        !s.ok()) {
      return s;
    }
    beta = 1.0f;
  }
  const float alpha = 1.0f;
  // out^T (OC x T) = W (OC x IC) . inp^T (IC x T), all column-major views.
  return Cublas(cublasSgemm(h.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(OC),
                            static_cast<int>(T), static_cast<int>(IC), &alpha, weight,
                            static_cast<int>(IC), inp, static_cast<int>(IC), &beta, out,
                            static_cast<int>(OC)),
                "linear_forward sgemm");
}

absl::Status linear_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                             const float* inp, const float* weight, int64_t T, int64_t IC,
                             int64_t OC, const CublasHandle& h) {
  if (absl::Status s = CheckDims(T, IC, OC, "linear_backward"); !s.ok()) return s;
  if (T == 0) return absl::OkStatus();
  const float one = 1.0f;
  if (dinp != nullptr) {
    // dinp^T (IC x T) += W^T (IC x OC) . dout^T (OC x T).
    if (absl::Status s = Cublas(
            cublasSgemm(h.get(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(IC),
                        static_cast<int>(T), static_cast<int>(OC), &one, weight,
                        static_cast<int>(IC), dout, static_cast<int>(OC), &one, dinp,
                        static_cast<int>(IC)),
            "linear_backward dinp sgemm");
        !s.ok()) {
      return s;
    }
  }
  // dweight^T (IC x OC) += inp^T (IC x T) . dout (T x OC).
  if (absl::Status s = Cublas(
          cublasSgemm(h.get(), CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(IC),
                      static_cast<int>(OC), static_cast<int>(T), &one, inp, static_cast<int>(IC),
                      dout, static_cast<int>(OC), &one, dweight, static_cast<int>(IC)),
          "linear_backward dweight sgemm");
      !s.ok()) {
    return s;
  }
  if (dbias != nullptr) {
    return CudaCheck(column_sums(dbias, dout, T, OC, h.stream()), "linear_backward dbias");
  }
  return absl::OkStatus();
}

namespace {

// C (m x n, column-major, fp32) = alpha op(A) op(B) + beta C with bf16 A, B.
absl::Status GemmBf16(const CublasHandle& h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                      int64_t n, int64_t k, const __nv_bfloat16* a, int64_t lda,
                      const __nv_bfloat16* b, int64_t ldb, float beta, float* c, int64_t ldc,
                      const char* what) {
  const float alpha = 1.0f;
  return Cublas(cublasGemmEx(h.get(), ta, tb, static_cast<int>(m), static_cast<int>(n),
                             static_cast<int>(k), &alpha, a, CUDA_R_16BF, static_cast<int>(lda), b,
                             CUDA_R_16BF, static_cast<int>(ldb), &beta, c, CUDA_R_32F,
                             static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                what);
}

}  // namespace

absl::Status linear_forward_bf16(float* out, const __nv_bfloat16* inp,
                                 const __nv_bfloat16* weight, const float* bias, int64_t T,
                                 int64_t IC, int64_t OC, const CublasHandle& h) {
  if (absl::Status s = CheckDims(T, IC, OC, "linear_forward_bf16"); !s.ok()) return s;
  if (T == 0) return absl::OkStatus();
  float beta = 0.0f;
  if (bias != nullptr) {
    if (absl::Status s = CudaCheck(broadcast_rows(out, bias, T, OC, h.stream()),
                                   "linear_forward_bf16 bias");
        !s.ok()) {
      return s;
    }
    beta = 1.0f;
  }
  return GemmBf16(h, CUBLAS_OP_T, CUBLAS_OP_N, OC, T, IC, weight, IC, inp, IC, beta, out, OC,
                  "linear_forward_bf16 gemm");
}

absl::Status linear_backward_bf16(float* dinp, float* dweight, float* dbias,
                                  const __nv_bfloat16* dout, const __nv_bfloat16* inp,
                                  const __nv_bfloat16* weight, int64_t T, int64_t IC, int64_t OC,
                                  const CublasHandle& h) {
  if (absl::Status s = CheckDims(T, IC, OC, "linear_backward_bf16"); !s.ok()) return s;
  if (T == 0) return absl::OkStatus();
  if (dinp != nullptr) {
    if (absl::Status s = GemmBf16(h, CUBLAS_OP_N, CUBLAS_OP_N, IC, T, OC, weight, IC, dout, OC,
                                  1.0f, dinp, IC, "linear_backward_bf16 dinp gemm");
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = GemmBf16(h, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, T, inp, IC, dout, OC, 1.0f,
                                dweight, IC, "linear_backward_bf16 dweight gemm");
      !s.ok()) {
    return s;
  }
  if (dbias == nullptr) return absl::OkStatus();
  // dbias from the bf16 dout: widen it, then the fp32 column sums.
  float* wide = nullptr;
  if (absl::Status s = CudaCheck(cudaMallocAsync(reinterpret_cast<void**>(&wide),
                                                 sizeof(float) * T * OC, h.stream()),
                                 "linear_backward_bf16 scratch");
      !s.ok()) {
    return s;
  }
  absl::Status s = CudaCheck(bf16_to_float(wide, dout, T * OC, h.stream()), "linear_backward_bf16");
  if (s.ok()) s = CudaCheck(column_sums(dbias, wide, T, OC, h.stream()), "linear_backward_bf16 dbias");
  (void)cudaFreeAsync(wide, h.stream());
  return s;
}

}  // namespace chunkflow::kernels::cuda
