#include "kernels/cpu/embedding.h"

#include <algorithm>
#include <cstring>

namespace chunkflow::kernels::cpu {
namespace {

constexpr int64_t kParallelThreshold = 1 << 14;  // elements; below this one thread is faster
constexpr int64_t kColumnBlock = 64;             // floats per backward work item

}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t T,
                       int64_t C) {
#pragma omp parallel for if (T * C > kParallelThreshold)
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(out + t * C, wte + static_cast<int64_t>(tokens[t]) * C, sizeof(float) * C);
  }
}

void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t T,
                        int64_t C) {
  // Parallel over column blocks, not rows: two rows with the same token would
  // otherwise race on dwte[token]. Within a block, rows run in order.
  const int64_t n_blocks = (C + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for if (T * C > kParallelThreshold)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = b * kColumnBlock;
    const int64_t c1 = std::min(C, c0 + kColumnBlock);
    for (int64_t t = 0; t < T; ++t) {
      float* dst = dwte + static_cast<int64_t>(tokens[t]) * C;
      const float* src = dout + t * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

}  // namespace chunkflow::kernels::cpu
