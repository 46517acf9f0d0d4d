#include "kernels/cuda/linear.h"

#include <cublasLt.h>

#include <array>
#include <string>
#include <limits>
#include <map>

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

// One GEMM shape's cuBLASLt descriptors and the algorithm picked for it; ok
// false: cuBLASLt has none, cublasGemmEx runs it.
struct LtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
};

struct CublasHandle::Lt {
  // Plans kept at most: chunk row counts vary, so a long run meets many
  // shapes; past this the cache starts over (a heuristic call per shape,
  // tens of microseconds, against GEMMs of milliseconds).
  static constexpr size_t kMaxPlans = 1024;

  ~Lt() {
    ClearPlans();
    if (handle != nullptr) cublasLtDestroy(handle);
  }
  void ClearPlans() {
    for (auto& [key, p] : plans) Destroy(p);
    plans.clear();
  }
  static void Destroy(LtPlan& p) {
    for (cublasLtMatrixLayout_t l : {p.a, p.b, p.c}) {
      if (l != nullptr) cublasLtMatrixLayoutDestroy(l);
    }
    if (p.desc != nullptr) cublasLtMatmulDescDestroy(p.desc);
    p = LtPlan();
  }
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  // (transa, transb, m, n, k, lda, ldb, ldc, beta != 0, alignment of A, B, C)
  std::map<std::array<int64_t, 12>, LtPlan> plans;
};

CublasHandle::CublasHandle(cublasHandle_t h, cudaStream_t s) : h_(h), stream_(s) {}
CublasHandle::CublasHandle(CublasHandle&& o) noexcept
    : h_(o.h_), stream_(o.stream_), lt_(std::move(o.lt_)) {
  o.h_ = nullptr;
}

absl::StatusOr<CublasHandle> CublasHandle::Create(cudaStream_t stream,
                                                  const CublasOptions& options) {
  cublasHandle_t h = nullptr;
  if (absl::Status s = Cublas(cublasCreate(&h), "cublasCreate"); !s.ok()) return s;
  CublasHandle out(h, stream);
  if (absl::Status s = Cublas(cublasSetStream(h, stream), "cublasSetStream"); !s.ok()) return s;
  // No TF32: the fp32 path is held to the CPU oracle.
  if (absl::Status s = Cublas(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
      !s.ok()) {
    return s;
  }
  if (options.workspace != nullptr && options.workspace_bytes > 0) {
    if (reinterpret_cast<uintptr_t>(options.workspace) % 256 != 0) {
      return absl::InvalidArgumentError("the cuBLAS workspace must be 256-byte aligned");
    }
    if (absl::Status s = Cublas(cublasSetWorkspace(h, options.workspace, options.workspace_bytes),
                                "cublasSetWorkspace");
        !s.ok()) {
      return s;
    }
  }
  if (RequestedBf16Backend(options) == GemmBackend::kLt) {
    auto lt = std::make_unique<Lt>();
    // Without cuBLASLt (cannot be loaded) the bf16 GEMMs fall back to
    // cublasGemmEx: bf16_backend() says so.
    if (cublasLtCreate(&lt->handle) == CUBLAS_STATUS_SUCCESS) {
      lt->workspace = options.workspace;
      lt->workspace_bytes = options.workspace != nullptr ? options.workspace_bytes : 0;
      out.lt_ = std::move(lt);
    }
  }
  return out;
}

CublasHandle::~CublasHandle() {
  lt_.reset();
  if (h_ != nullptr) cublasDestroy(h_);
}

GemmBackend CublasHandle::bf16_backend() const {
  return lt_ != nullptr ? GemmBackend::kLt : GemmBackend::kGemmEx;
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

// The largest power of two up to 256 that divides the address (cuBLASLt's
// algorithms state the alignment they need).
int64_t Alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int64_t align = 256;
  while (align > 1 && a % static_cast<uintptr_t>(align) != 0) align /= 2;
  return align;
}

// A cuBLASLt call's status: ALLOC_FAILED is transient (UNAVAILABLE); any
// other failure means the call itself was refused, a bug here (INTERNAL).
absl::Status LtCheck(cublasStatus_t s, const char* call) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string why = absl::StrCat(call, ": ", cublasGetStatusName(s));
  return s == CUBLAS_STATUS_ALLOC_FAILED ? absl::UnavailableError(why) : absl::InternalError(why);
}

#define CF_LT(call, name)                                  \
  do {                                                     \
    if (absl::Status s_ = LtCheck((call), name); !s_.ok()) { \
      return s_;                                           \
    }                                                      \
  } while (false)

// Descriptors and the heuristic's first algorithm for one shape. OK with
// p->ok false when cuBLASLt has no algorithm for it (NOT_SUPPORTED, or none
// found): an answer worth keeping, cublasGemmEx runs the shape. UNAVAILABLE:
// a transient failure, not kept (cublasGemmEx runs it this time). INTERNAL:
// cuBLASLt refused a call, which no fallback should hide.
absl::Status MakePlan(const CublasHandle::Lt& lt, cublasOperation_t ta, cublasOperation_t tb,
                      int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc,
                      const std::array<int64_t, 12>& key, LtPlan* p) {
  const int32_t opa = ta, opb = tb;
  CF_LT(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
        "cublasLtMatmulDescCreate");
  CF_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)),
        "cublasLtMatmulDescSetAttribute(TRANSA)");
  CF_LT(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)),
        "cublasLtMatmulDescSetAttribute(TRANSB)");
  // Column-major layouts of the stored matrices (before op()).
  const bool na = ta == CUBLAS_OP_N, nb = tb == CUBLAS_OP_N;
  CF_LT(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, na ? m : k, na ? k : m, lda),
        "cublasLtMatrixLayoutCreate(A)");
  CF_LT(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, nb ? k : n, nb ? n : k, ldb),
        "cublasLtMatrixLayoutCreate(B)");
  CF_LT(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, m, n, ldc), "cublasLtMatrixLayoutCreate(C)");
  cublasLtMatmulPreference_t pref = nullptr;
  CF_LT(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = lt.workspace_bytes;
  const uint32_t align[4] = {static_cast<uint32_t>(key[9]), static_cast<uint32_t>(key[10]),
                             static_cast<uint32_t>(key[11]), static_cast<uint32_t>(key[11])};
  absl::Status st = LtCheck(cublasLtMatmulPreferenceSetAttribute(
                                pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
                            "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)");
  const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4 && st.ok(); ++i) {
    st = LtCheck(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &align[i],
                                                      sizeof(align[i])),
                 "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT)");
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t h = CUBLAS_STATUS_SUCCESS;
  if (st.ok()) {
    h = cublasLtMatmulAlgoGetHeuristic(lt.handle, p->desc, p->a, p->b, p->c, p->c, pref, 1,
                                       &result, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (!st.ok()) return st;
  if (h == CUBLAS_STATUS_NOT_SUPPORTED) return absl::OkStatus();  // no algorithm: kept
  CF_LT(h, "cublasLtMatmulAlgoGetHeuristic");
  if (found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    p->algo = result.algo;
    p->ok = true;
  }
  return absl::OkStatus();
}

#undef CF_LT

// C (m x n, column-major, fp32) = op(A) op(B) + beta C with bf16 A, B and
// fp32 accumulation: cuBLASLt with the shape's kept plan, else cublasGemmEx.
absl::Status GemmBf16(const CublasHandle& h, cublasOperation_t ta, cublasOperation_t tb, int64_t m,
                      int64_t n, int64_t k, const __nv_bfloat16* a, int64_t lda,
                      const __nv_bfloat16* b, int64_t ldb, float beta, float* c, int64_t ldc,
                      const char* what) {
  const float alpha = 1.0f;
  if (CublasHandle::Lt* lt = h.lt()) {
    const std::array<int64_t, 12> key = {ta,  tb,  m,   n,
                                         k,   lda, ldb, ldc,
                                         beta != 0.0f, Alignment(a), Alignment(b), Alignment(c)};
    auto it = lt->plans.find(key);
    if (it == lt->plans.end()) {
      if (lt->plans.size() >= CublasHandle::Lt::kMaxPlans) lt->ClearPlans();
      it = lt->plans.try_emplace(key).first;
      if (absl::Status st = MakePlan(*lt, ta, tb, m, n, k, lda, ldb, ldc, key, &it->second);
          !st.ok()) {
        CublasHandle::Lt::Destroy(it->second);
        lt->plans.erase(it);
        it = lt->plans.end();
        if (!absl::IsUnavailable(st)) {
          return absl::InternalError(absl::StrCat(what, ": ", st.message()));
        }
      }
    }
    if (it != lt->plans.end() && it->second.ok) {
      const LtPlan& p = it->second;
      return Cublas(cublasLtMatmul(lt->handle, p.desc, &alpha, a, p.a, b, p.b, &beta, c, p.c, c,
                                   p.c, &p.algo, lt->workspace, lt->workspace_bytes, h.stream()),
                    what);
    }
  }
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
  // Straight from the bf16 dout: no widened copy, nothing allocated.
  return CudaCheck(column_sums(dbias, dout, T, OC, h.stream()), "linear_backward_bf16 dbias");
}

}  // namespace chunkflow::kernels::cuda
