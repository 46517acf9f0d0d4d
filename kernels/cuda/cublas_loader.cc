// cuBLAS, loaded when the first call needs it instead of at program start.
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

#include <cublas_api.h>
#include <dlfcn.h>

#include <string>

namespace {

struct Library {
  void* handle = nullptr;
  std::string error;
};

const Library& Cublas() {
  static const Library lib = [] {
    Library l;
    // The soname of the cuBLAS this was compiled against first
    // (LD_LIBRARY_PATH, pip's nvidia-cublas), then the toolkit's copy.
    const std::string soname = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    for (const std::string& name : {soname, "/usr/local/cuda/lib64/" + soname}) {
      l.handle = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (l.handle != nullptr) return l;
      const char* e = ::dlerror();
      l.error = e != nullptr ? e : "dlopen failed";
    }
    return l;
  }();
  return lib;
}

template <typename Fn>
Fn Resolve(const char* name) {
  const Library& l = Cublas();
  if (l.handle == nullptr) return nullptr;
  return reinterpret_cast<Fn>(::dlsym(l.handle, name));
}

// Each entry point resolves its symbol once.
#define CF_CUBLAS_FN(name) \
  static const auto fn = Resolve<decltype(&::name)>(#name)

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

}  // extern "C"
