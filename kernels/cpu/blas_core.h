// Makes OpenBLAS use the GEMM kernels the CPU supports.
//
// OpenBLAS (DYNAMIC_ARCH, as Debian builds it) picks its kernels from the
// CPU's family/model. Virtual machines that hide the model (CPUID "Intel(R)
// Xeon(R) Processor") make it fall back to its SSE3 "Prescott" kernels: on
// this project's 2-core VM a training step ran 2.8x slower (engine_bench, one
// 4096-token sequence: 9.0 s Prescott, 3.3 s SkylakeX). OpenBLAS reads
// OPENBLAS_CORETYPE only when it loads, so the fix is to set it and start the
// program again.
//
//   int main(int argc, char** argv) {
//     chunkflow::kernels::cpu::SelectBlasCore(argv);  // first line of main
//     ...
//
// Children (e.g. a PyTorch baseline linked to the same OpenBLAS) inherit the
// variable, so both sides of a benchmark use the same kernels.

#ifndef CHUNKFLOW_KERNELS_CPU_BLAS_CORE_H_
#define CHUNKFLOW_KERNELS_CPU_BLAS_CORE_H_

#include <string>

namespace chunkflow::kernels::cpu {

// OpenBLAS's kernel family in use ("SkylakeX", "Haswell", "Prescott", ...).
std::string BlasCoreName();

// When OpenBLAS fell back to Prescott, OPENBLAS_CORETYPE is unset and the CPU
// has AVX-512 (F, BW, DQ, VL) or AVX2 + FMA, sets OPENBLAS_CORETYPE to
// SkylakeX or Haswell and re-executes /proc/self/exe with `argv` (never
// returns then). Otherwise, or if the exec fails, returns and nothing changes.
void SelectBlasCore(char** argv);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_BLAS_CORE_H_
