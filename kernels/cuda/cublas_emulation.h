// A CPU stand-in for the cuBLAS and cuBLASLt C API calls kernels/cuda/linear.cc
// makes (test-only; cublas_emulation.cc), so the real linear.cc - its column-
// major layouts and transposes, its cuBLASLt plan cache and its fallbacks -
// runs in CI against the CPU linear op. Linked with the CUDA runtime host
// emulation (host_emulation_runtime) instead of cuBLAS and the loader.
//
// The emulation checks what the real library would refuse: attribute sizes
// (TRANSA/B int32_t, workspace uint64_t, alignments uint32_t), layouts that
// disagree with each other, A/B types other than bf16 with fp32 C/D,
// compute or scale types other than 32F, an algorithm used with a pointer
// less aligned than the preference it was picked under or with other
// transposes, a workspace that is not 256-byte aligned or smaller than the
// algorithm needs, C and D descriptors that differ for an in-place matmul.
// It computes in double (OpenBLAS's dgemm) and rounds once to fp32.
//
//   cublas_emulation::Reset();
//   cublas_emulation::FailHeuristic(/*m=*/24, CUBLAS_STATUS_NOT_SUPPORTED);
//   ... linear_forward_bf16(...) ...
//   EXPECT_EQ(cublas_emulation::Get().heuristic_calls, 1);

#ifndef CHUNKFLOW_KERNELS_CUDA_CUBLAS_EMULATION_H_
#define CHUNKFLOW_KERNELS_CUDA_CUBLAS_EMULATION_H_

#include <cublas_api.h>

#include <cstddef>
#include <cstdint>

namespace chunkflow::kernels::cuda::cublas_emulation {

struct Counters {
  int64_t heuristic_calls = 0;
  int64_t lt_matmuls = 0;
  int64_t gemm_ex_calls = 0;
  int64_t sgemm_calls = 0;
  int64_t live_descriptors = 0;  // matmul descs + layouts + preferences not destroyed
  const void* last_workspace = nullptr;  // of the last cublasLtMatmul
  size_t last_workspace_bytes = 0;
  const void* legacy_workspace = nullptr;  // cublasSetWorkspace's
};

// The counters since the last Reset (which also drops FailHeuristic).
const Counters& Get();
void Reset();

// Heuristic calls for GEMMs whose C has m rows answer `status` instead
// (NOT_SUPPORTED: no algorithm; ALLOC_FAILED: a transient failure); with
// `once`, only the next such call.
void FailHeuristic(int64_t m, cublasStatus_t status, bool once = false);

}  // namespace chunkflow::kernels::cuda::cublas_emulation

#endif  // CHUNKFLOW_KERNELS_CUDA_CUBLAS_EMULATION_H_
