// cuBLAS and cuBLASLt, loaded when the first call needs them instead of at
// program start.
//
// Why by hand (no library does this): cuBLAS is about 600 MB of shared
// libraries and adds 92 KiB of static TLS to every thread of a process that
// links it. chunkflowctl's admin commands, the coordinator and CPU workers
// never run a GEMM on a GPU, and civetweb's 100 KiB /metrics threads do not
// survive that much TLS (see metrics/thread_stack.cc). Loading cuBLAS with
// dlopen when a CUDA stage creates its first handle keeps every other process
// as it was. These are the cuBLAS entry points kernels/cuda uses, with
// cuBLAS's own signatures (cublas_api.h), forwarding to the real ones; when
// the library cannot be loaded every call returns
// CUBLAS_STATUS_NOT_INITIALIZED and cublasGetStatusString says why.

#include <cublasLt.h>
#include <cublas_api.h>
#include <dlfcn.h>

#include <string>

namespace {

struct Library {
  void* handle = nullptr;
  std::string error;
};

// `stem` ("libcublas", "libcublasLt") with the major version this was
// compiled against: from the loader's path first (LD_LIBRARY_PATH, pip's
// nvidia-cublas), then the toolkit's copy.
Library Load(const std::string& stem) {
  Library l;
  const std::string soname = stem + ".so." + std::to_string(CUBLAS_VER_MAJOR);
  for (const std::string& name : {soname, "/usr/local/cuda/lib64/" + soname}) {
    l.handle = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (l.handle != nullptr) return l;
    const char* e = ::dlerror();
    l.error = e != nullptr ? e : "dlopen failed";
  }
  return l;
}

const Library& Cublas() {
  static const Library lib = Load("libcublas");
  return lib;
}

const Library& CublasLt() {
  static const Library lib = Load("libcublasLt");
  return lib;
}

template <typename Fn>
Fn Resolve(const Library& l, const char* name) {
  if (l.handle == nullptr) return nullptr;
  return reinterpret_cast<Fn>(::dlsym(l.handle, name));
}
template <typename Fn>
Fn Resolve(const char* name) {
  return Resolve<Fn>(Cublas(), name);
}

// Each entry point resolves its symbol once.
#define CF_CUBLAS_FN(name) \
  static const auto fn = Resolve<decltype(&::name)>(#name)
#define CF_CUBLASLT_FN(name) \
  static const auto fn = Resolve<decltype(&::name)>(CublasLt(), #name)

}  // namespace

extern "C" {

cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) {
  CF_CUBLAS_FN(cublasCreate_v2);
  return fn != nullptr ? fn(handle) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
  CF_CUBLAS_FN(cublasDestroy_v2);
  return fn != nullptr ? fn(handle) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  CF_CUBLAS_FN(cublasSetStream_v2);
  return fn != nullptr ? fn(handle, stream) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasSetWorkspace_v2(cublasHandle_t handle, void* workspace,
                                                  size_t workspaceSizeInBytes) {
  CF_CUBLAS_FN(cublasSetWorkspace_v2);
  return fn != nullptr ? fn(handle, workspace, workspaceSizeInBytes)
                       : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  CF_CUBLAS_FN(cublasSetMathMode);
  return fn != nullptr ? fn(handle, mode) : CUBLAS_STATUS_NOT_INITIALIZED;
}

const char* CUBLASWINAPI cublasGetStatusName(cublasStatus_t status) {
  CF_CUBLAS_FN(cublasGetStatusName);
  return fn != nullptr ? fn(status) : "CUBLAS_STATUS_NOT_INITIALIZED";
}

const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
  CF_CUBLAS_FN(cublasGetStatusString);
  if (fn != nullptr) return fn(status);
  static const std::string why = "cuBLAS could not be loaded: " + Cublas().error;
  return why.c_str();
}

cublasStatus_t CUBLASWINAPI cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa,
                                           cublasOperation_t transb, int m, int n, int k,
                                           const float* alpha, const float* A, int lda,
                                           const float* B, int ldb, const float* beta, float* C,
                                           int ldc) {
  CF_CUBLAS_FN(cublasSgemm_v2);
  return fn != nullptr ? fn(handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)
                       : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                                         cublasOperation_t transb, int m, int n, int k,
                                         const void* alpha, const void* A, cudaDataType Atype,
                                         int lda, const void* B, cudaDataType Btype, int ldb,
                                         const void* beta, void* C, cudaDataType Ctype, int ldc,
                                         cublasComputeType_t computeType, cublasGemmAlgo_t algo) {
  using Fn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                int, const void*, const void*, cudaDataType, int, const void*,
                                cudaDataType, int, const void*, void*, cudaDataType, int,
                                cublasComputeType_t, cublasGemmAlgo_t);
  static const Fn fn = Resolve<Fn>("cublasGemmEx");
  return fn != nullptr ? fn(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb,
                            beta, C, Ctype, ldc, computeType, algo)
                       : CUBLAS_STATUS_NOT_INITIALIZED;
}

// cuBLASLt: the bf16 GEMMs (linear.cc).

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* lightHandle) {
  CF_CUBLASLT_FN(cublasLtCreate);
  return fn != nullptr ? fn(lightHandle) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t lightHandle) {
  CF_CUBLASLT_FN(cublasLtDestroy);
  return fn != nullptr ? fn(lightHandle) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc,
                                                     cublasComputeType_t computeType,
                                                     cudaDataType_t scaleType) {
  CF_CUBLASLT_FN(cublasLtMatmulDescCreate);
  return fn != nullptr ? fn(matmulDesc, computeType, scaleType) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc) {
  CF_CUBLASLT_FN(cublasLtMatmulDescDestroy);
  return fn != nullptr ? fn(matmulDesc) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t sizeInBytes) {
  CF_CUBLASLT_FN(cublasLtMatmulDescSetAttribute);
  return fn != nullptr ? fn(matmulDesc, attr, buf, sizeInBytes) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout,
                                                       cudaDataType type, uint64_t rows,
                                                       uint64_t cols, int64_t ld) {
  CF_CUBLASLT_FN(cublasLtMatrixLayoutCreate);
  return fn != nullptr ? fn(matLayout, type, rows, cols, ld) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout) {
  CF_CUBLASLT_FN(cublasLtMatrixLayoutDestroy);
  return fn != nullptr ? fn(matLayout) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  CF_CUBLASLT_FN(cublasLtMatmulPreferenceCreate);
  return fn != nullptr ? fn(pref) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  CF_CUBLASLT_FN(cublasLtMatmulPreferenceDestroy);
  return fn != nullptr ? fn(pref) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(
    cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
    size_t sizeInBytes) {
  CF_CUBLASLT_FN(cublasLtMatmulPreferenceSetAttribute);
  return fn != nullptr ? fn(pref, attr, buf, sizeInBytes) : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t operationDesc,
    cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc,
    cublasLtMatrixLayout_t Ddesc, cublasLtMatmulPreference_t preference, int requestedAlgoCount,
    cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int* returnAlgoCount) {
  CF_CUBLASLT_FN(cublasLtMatmulAlgoGetHeuristic);
  return fn != nullptr ? fn(lightHandle, operationDesc, Adesc, Bdesc, Cdesc, Ddesc, preference,
                            requestedAlgoCount, heuristicResultsArray, returnAlgoCount)
                       : CUBLAS_STATUS_NOT_INITIALIZED;
}

cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t lightHandle,
                                           cublasLtMatmulDesc_t computeDesc, const void* alpha,
                                           const void* A, cublasLtMatrixLayout_t Adesc,
                                           const void* B, cublasLtMatrixLayout_t Bdesc,
                                           const void* beta, const void* C,
                                           cublasLtMatrixLayout_t Cdesc, void* D,
                                           cublasLtMatrixLayout_t Ddesc,
                                           const cublasLtMatmulAlgo_t* algo, void* workspace,
                                           size_t workspaceSizeInBytes, cudaStream_t stream) {
  CF_CUBLASLT_FN(cublasLtMatmul);
  return fn != nullptr ? fn(lightHandle, computeDesc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D,
                            Ddesc, algo, workspace, workspaceSizeInBytes, stream)
                       : CUBLAS_STATUS_NOT_INITIALIZED;
}

}  // extern "C"
