// CUDA errors as absl::Status naming the op: what every launch is checked with.
//
//   if (absl::Status s = CudaCheck(cuda::swiglu_forward(...), "swiglu_forward"); !s.ok()) ...
//   if (absl::Status s = CudaSync(stream, "step"); !s.ok()) ...   // faults inside kernels

#ifndef CHUNKFLOW_KERNELS_CUDA_STATUS_H_
#define CHUNKFLOW_KERNELS_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace chunkflow::kernels::cuda {

// OK for cudaSuccess; otherwise INTERNAL (INVALID_ARGUMENT for a bad launch
// configuration or value, RESOURCE_EXHAUSTED for out of memory) with
// "<what>: <cudaGetErrorName>: <cudaGetErrorString>".
absl::Status CudaCheck(cudaError_t e, const char* what);

// Waits for `stream` and reports a fault of anything that ran on it.
absl::Status CudaSync(cudaStream_t stream, const char* what);

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_STATUS_H_
