#include "kernels/cuda/status.h"

#include "absl/strings/str_cat.h"

namespace chunkflow::kernels::cuda {

absl::Status CudaCheck(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  const std::string msg =
      absl::StrCat(what, ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
  switch (e) {
    case cudaErrorInvalidValue:
    case cudaErrorInvalidConfiguration:
      return absl::InvalidArgumentError(msg);
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status CudaSync(cudaStream_t stream, const char* what) {
  return CudaCheck(cudaStreamSynchronize(stream), what);
}

}  // namespace chunkflow::kernels::cuda
