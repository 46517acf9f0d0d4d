// CUDA-event timing for the GPU benchmarks: milliseconds per call of `fn`
// (an absl::Status-returning callable that enqueues work on the default
// stream) over `iters` calls after `warmup` untimed ones.

#ifndef CHUNKFLOW_KERNELS_CUDA_BENCH_TIMING_H_
#define CHUNKFLOW_KERNELS_CUDA_BENCH_TIMING_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/status.h"

namespace chunkflow::kernels::cuda {

template <typename F>
absl::StatusOr<double> TimeMs(F fn, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) {
    if (absl::Status s = fn(); !s.ok()) return s;
  }
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaEventRecord(a, nullptr);
  for (int i = 0; i < iters; ++i) {
    if (absl::Status s = fn(); !s.ok()) return s;
  }
  cudaEventRecord(b, nullptr);
  absl::Status synced = CudaSync(nullptr, "benchmark");
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (!synced.ok()) return synced;
  return iters > 0 ? ms / iters : 0.0;
}

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_BENCH_TIMING_H_
