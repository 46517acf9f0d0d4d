// See cublas_emulation.h. The entry points have cuBLAS's and cuBLASLt's own
// signatures (cublas_api.h, cublasLt.h); descriptors are this file's structs
// behind the libraries' handle types.

#include "kernels/cuda/cublas_emulation.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cblas.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

// The libraries' opaque handle types, defined here.
struct cublasContext {
  cudaStream_t stream = nullptr;
};
struct cublasLtContext {};

namespace chunkflow::kernels::cuda::cublas_emulation {
namespace {

struct Failure {
  int64_t m;
  cublasStatus_t status;
  bool once;
};

std::mutex mu;
Counters counters;
std::vector<Failure> failures;

struct Desc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  int32_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
};
struct Layout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};
struct Pref {
  uint64_t max_workspace = 0;
  uint32_t align[4] = {256, 256, 256, 256};  // A, B, C, D: cuBLASLt's defaults
};

constexpr uint64_t kAlgoMagic = 0xC0B1A5A160ULL;
// What an algorithm of this emulation needs: up to 4 KiB of workspace.
constexpr uint64_t kAlgoWorkspace = 4096;

Desc* D(cublasLtMatmulDesc_t d) { return reinterpret_cast<Desc*>(d); }
Layout* L(cublasLtMatrixLayout_t l) { return reinterpret_cast<Layout*>(l); }
Pref* P(cublasLtMatmulPreference_t p) { return reinterpret_cast<Pref*>(p); }

// Counts descriptors made (+1) and destroyed (-1).
cublasStatus_t Track(int delta) {
  std::lock_guard<std::mutex> lock(mu);
  counters.live_descriptors += delta;
  return CUBLAS_STATUS_SUCCESS;
}

bool Aligned(const void* p, uint64_t align) {
  return align == 0 || reinterpret_cast<uintptr_t>(p) % align == 0;
}

double Bf16(const void* p, int64_t i) {
  return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
}
double F32(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }

// A stored column-major matrix (rows x cols, leading dimension ld) widened
// to double, in the same layout.
template <typename Get>
std::vector<double> Widen(const void* x, int64_t rows, int64_t cols, int64_t ld, Get get) {
  const int64_t n = cols > 0 && rows > 0 ? ld * (cols - 1) + rows : 0;
  std::vector<double> out(static_cast<size_t>(std::max<int64_t>(n, 1)));
  for (int64_t i = 0; i < n; ++i) out[i] = get(x, i);
  return out;
}

// C (m x n, column-major) = alpha op(A) op(B) + beta C, in double (OpenBLAS's
// dgemm) and rounded once to fp32; C is not read when beta is 0.
template <typename Get>
void Gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, double beta, float* c, int64_t ldc, Get get) {
  if (m == 0 || n == 0) return;
  const std::vector<double> ad = Widen(a, ta ? k : m, ta ? m : k, lda, get);
  const std::vector<double> bd = Widen(b, tb ? n : k, tb ? k : n, ldb, get);
  std::vector<double> cd = beta != 0 ? Widen(c, m, n, ldc, F32)
                                     : std::vector<double>(static_cast<size_t>(ldc * (n - 1) + m));
  if (k > 0) {
    cblas_dgemm(CblasColMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, ad.data(),
                static_cast<int>(lda), bd.data(), static_cast<int>(ldb), beta, cd.data(),
                static_cast<int>(ldc));
  } else {
    for (double& v : cd) v *= beta;
  }
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t i = 0; i < m; ++i) c[i + j * ldc] = static_cast<float>(cd[i + j * ldc]);
  }
}

bool LegacyArgsOk(int m, int n, int k, int lda, int ldb, int ldc, bool ta, bool tb) {
  return m >= 0 && n >= 0 && k >= 0 && lda >= std::max(1, ta ? k : m) &&
         ldb >= std::max(1, tb ? n : k) && ldc >= std::max(1, m);
}

// m, n, k of a matmul from its layouts; false when they disagree.
bool Shape(const Desc& d, const Layout& a, const Layout& b, const Layout& c, const Layout& dd,
           uint64_t* m, uint64_t* n, uint64_t* k) {
  const bool ta = d.ta != CUBLAS_OP_N, tb = d.tb != CUBLAS_OP_N;
  *m = c.rows;
  *n = c.cols;
  *k = ta ? a.rows : a.cols;
  const uint64_t am = ta ? a.cols : a.rows;
  const uint64_t bk = tb ? b.cols : b.rows, bn = tb ? b.rows : b.cols;
  const auto ld_ok = [](const Layout& l) { return l.ld >= static_cast<int64_t>(std::max<uint64_t>(l.rows, 1)); };
  return am == *m && bk == *k && bn == *n && dd.rows == c.rows && dd.cols == c.cols &&
         ld_ok(a) && ld_ok(b) && ld_ok(c) && ld_ok(dd);
}

}  // namespace

const Counters& Get() { return counters; }

void Reset() {
  std::lock_guard<std::mutex> lock(mu);
  const int64_t live = counters.live_descriptors;  // descriptors outlive a reset
  counters = Counters();
  counters.live_descriptors = live;
  failures.clear();
}

void FailHeuristic(int64_t m, cublasStatus_t status, bool once) {
  std::lock_guard<std::mutex> lock(mu);
  failures.push_back({m, status, once});
}

}  // namespace chunkflow::kernels::cuda::cublas_emulation

namespace emu = ::chunkflow::kernels::cuda::cublas_emulation;

extern "C" {

// --- cuBLAS ---------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) {
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t, cublasMath_t) {
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t, void* workspace,
                                                  size_t workspaceSizeInBytes) {
  if (workspace != nullptr && !emu::Aligned(workspace, 256)) return CUBLAS_STATUS_INVALID_VALUE;
  std::lock_guard<std::mutex> lock(emu::mu);
  emu::counters.legacy_workspace = workspaceSizeInBytes > 0 ? workspace : nullptr;
  return CUBLAS_STATUS_SUCCESS;
}
const char* CUBLASWINAPI cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    default: return "CUBLAS_STATUS_(emulated)";
  }
}
const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t) { return "emulated cuBLAS"; }

cublasStatus_t CUBLASWINAPI cublasSgemm_v2(cublasHandle_t, cublasOperation_t transa,
                                           cublasOperation_t transb, int m, int n, int k,
                                           const float* alpha, const float* A, int lda,
                                           const float* B, int ldb, const float* beta, float* C,
                                           int ldc) {
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  if (!emu::LegacyArgsOk(m, n, k, lda, ldb, ldc, ta, tb)) return CUBLAS_STATUS_INVALID_VALUE;
  emu::Gemm(ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc, emu::F32);
  std::lock_guard<std::mutex> lock(emu::mu);
  ++emu::counters.sgemm_calls;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const void* alpha, const void* A, cudaDataType Atype,
                                         int lda, const void* B, cudaDataType Btype, int ldb,
                                         const void* beta, void* C, cudaDataType Ctype, int ldc,
                                         cublasComputeType_t computeType, cublasGemmAlgo_t) {
  const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
  if (Atype != CUDA_R_16BF || Btype != CUDA_R_16BF || Ctype != CUDA_R_32F ||
      computeType != CUBLAS_COMPUTE_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (!emu::LegacyArgsOk(m, n, k, lda, ldb, ldc, ta, tb)) return CUBLAS_STATUS_INVALID_VALUE;
  emu::Gemm(ta, tb, m, n, k, *static_cast<const float*>(alpha), A, lda, B, ldb,
            *static_cast<const float*>(beta), static_cast<float*>(C), ldc, emu::Bf16);
  std::lock_guard<std::mutex> lock(emu::mu);
  ++emu::counters.gemm_ex_calls;
  return CUBLAS_STATUS_SUCCESS;
}

// --- cuBLASLt ---------------------------------------------------------------

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* lightHandle) {
  *lightHandle = new cublasLtContext();
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t lightHandle) {
  delete lightHandle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc,
                                                     cublasComputeType_t computeType,
                                                     cudaDataType_t scaleType) {
  *matmulDesc = reinterpret_cast<cublasLtMatmulDesc_t>(new emu::Desc{computeType, scaleType});
  return emu::Track(+1);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  delete emu::D(matmulDesc);
  return emu::Track(-1);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t sizeInBytes) {
  if (attr != CUBLASLT_MATMUL_DESC_TRANSA && attr != CUBLASLT_MATMUL_DESC_TRANSB) {
    return CUBLAS_STATUS_NOT_SUPPORTED;  // not one linear.cc needs
  }
  if (buf == nullptr || sizeInBytes != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
  const int32_t op = *static_cast<const int32_t*>(buf);
  if (op != CUBLAS_OP_N && op != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
  (attr == CUBLASLT_MATMUL_DESC_TRANSA ? emu::D(matmulDesc)->ta : emu::D(matmulDesc)->tb) = op;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout,
                                                       cudaDataType type, uint64_t rows,
                                                       uint64_t cols, int64_t ld) {
  *matLayout = reinterpret_cast<cublasLtMatrixLayout_t>(new emu::Layout{type, rows, cols, ld});
  return emu::Track(+1);
}
cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  delete emu::L(matLayout);
  return emu::Track(-1);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new emu::Pref());
  return emu::Track(+1);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete emu::P(pref);
  return emu::Track(-1);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(
    cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
    size_t sizeInBytes) {
  if (buf == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  emu::Pref& p = *emu::P(pref);
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      if (sizeInBytes != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
      p.max_workspace = *static_cast<const uint64_t*>(buf);
      return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES:
      if (sizeInBytes != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
      p.align[attr - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] =
          *static_cast<const uint32_t*>(buf);
      return CUBLAS_STATUS_SUCCESS;
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t, cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
    cublasLtMatmulPreference_t preference, int requestedAlgoCount,
    cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int* returnAlgoCount) {
  std::lock_guard<std::mutex> lock(emu::mu);
  ++emu::counters.heuristic_calls;
  *returnAlgoCount = 0;
  const emu::Desc& d = *emu::D(operationDesc);
  const emu::Layout &a = *emu::L(Adesc), &b = *emu::L(Bdesc), &c = *emu::L(Cdesc),
                    &dd = *emu::L(Ddesc);
  uint64_t m = 0, n = 0, k = 0;
  if (requestedAlgoCount < 1 || !emu::Shape(d, a, b, c, dd, &m, &n, &k)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F || a.type != CUDA_R_16BF ||
      b.type != CUDA_R_16BF || c.type != CUDA_R_32F || dd.type != CUDA_R_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  for (auto it = emu::failures.begin(); it != emu::failures.end(); ++it) {
    if (it->m != static_cast<int64_t>(m)) continue;
    const cublasStatus_t st = it->status;
    if (it->once) emu::failures.erase(it);
    return st;
  }
  const emu::Pref& p = *emu::P(preference);
  cublasLtMatmulHeuristicResult_t& r = heuristicResultsArray[0];
  r = cublasLtMatmulHeuristicResult_t{};
  r.workspaceSize = std::min<uint64_t>(p.max_workspace, emu::kAlgoWorkspace);
  // What the algorithm was picked for: the shape, the transposes, the
  // alignments (16 bits each) and the workspace it needs.
  r.algo.data[0] = emu::kAlgoMagic;
  r.algo.data[1] = m;
  r.algo.data[2] = n;
  r.algo.data[3] = k;
  for (int i = 0; i < 4; ++i) r.algo.data[4] |= static_cast<uint64_t>(p.align[i] & 0xFFFF) << (16 * i);
  r.algo.data[5] = r.workspaceSize;
  r.algo.data[6] = static_cast<uint64_t>(d.ta) | static_cast<uint64_t>(d.tb) << 8;
  r.state = CUBLAS_STATUS_SUCCESS;
  r.wavesCount = 1.0f;
  *returnAlgoCount = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t computeDesc,
                                           const void* alpha, const void* A,
                                           cublasLtMatrixLayout_t Adesc, const void* B,
                                           cublasLtMatrixLayout_t Bdesc, const void* beta,
                                           const void* C, cublasLtMatrixLayout_t Cdesc, void* Dp,
                                           cublasLtMatrixLayout_t Ddesc,
                                           const cublasLtMatmulAlgo_t* algo, void* workspace,
                                           size_t workspaceSizeInBytes, cudaStream_t) {
  const emu::Desc& d = *emu::D(computeDesc);
  const emu::Layout &a = *emu::L(Adesc), &b = *emu::L(Bdesc), &c = *emu::L(Cdesc),
                    &dd = *emu::L(Ddesc);
  uint64_t m = 0, n = 0, k = 0;
  if (!emu::Shape(d, a, b, c, dd, &m, &n, &k) || algo == nullptr ||
      algo->data[0] != emu::kAlgoMagic || algo->data[1] != m || algo->data[2] != n ||
      algo->data[3] != k ||
      algo->data[6] != (static_cast<uint64_t>(d.ta) | static_cast<uint64_t>(d.tb) << 8)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F || a.type != CUDA_R_16BF ||
      b.type != CUDA_R_16BF || c.type != CUDA_R_32F || dd.type != CUDA_R_32F) {
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  // The algorithm was picked for these alignments: the pointers must have them.
  const void* ptrs[4] = {A, B, C, Dp};
  for (int i = 0; i < 4; ++i) {
    if (!emu::Aligned(ptrs[i], (algo->data[4] >> (16 * i)) & 0xFFFF)) {
      return CUBLAS_STATUS_INVALID_VALUE;
    }
  }
  // At least the workspace the algorithm needs, 256-byte aligned.
  const uint64_t need = algo->data[5];
  if (workspaceSizeInBytes < need ||
      (need > 0 && (workspace == nullptr || !emu::Aligned(workspace, 256)))) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  // In place (linear.cc's use) needs C's and D's descriptors to agree.
  if (C == Dp && (c.ld != dd.ld || c.type != dd.type)) return CUBLAS_STATUS_INVALID_VALUE;
  if (C != Dp) return CUBLAS_STATUS_NOT_SUPPORTED;  // not emulated
  const bool ta = d.ta != CUBLAS_OP_N, tb = d.tb != CUBLAS_OP_N;
  emu::Gemm(ta, tb, static_cast<int64_t>(m), static_cast<int64_t>(n), static_cast<int64_t>(k),
            *static_cast<const float*>(alpha), A, a.ld, B, b.ld, *static_cast<const float*>(beta),
            static_cast<float*>(Dp), dd.ld, emu::Bf16);
  std::lock_guard<std::mutex> lock(emu::mu);
  ++emu::counters.lt_matmuls;
  emu::counters.last_workspace = workspace;
  emu::counters.last_workspace_bytes = workspaceSizeInBytes;
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
