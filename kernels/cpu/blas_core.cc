#include "kernels/cpu/blas_core.h"

#include <unistd.h>

#include <cstdlib>

extern "C" char* openblas_get_corename(void);

namespace chunkflow::kernels::cpu {

std::string BlasCoreName() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

void SelectBlasCore(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr || BlasCoreName() != "Prescott") return;
  __builtin_cpu_init();
  const char* core = nullptr;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    core = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    core = "Haswell";
  }
  if (core == nullptr) return;
  ::setenv("OPENBLAS_CORETYPE", core, /*overwrite=*/1);
  ::execv("/proc/self/exe", argv);
  // exec failed: keep running on the slower kernels.
}

}  // namespace chunkflow::kernels::cpu
