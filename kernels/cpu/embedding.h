// Token embedding lookup (the model's `embed_tokens` / llm.c's wte part of
// encoder_forward): row t of the output is row tokens[t] of the table.
//
// Gradient contract (whole project): every gradient output is ACCUMULATED
// (+=), parameter and activation gradients alike; callers zero the buffers.
// Forward outputs are overwritten (=). Row-major fp32 unless noted.
//
// Usage:
//   embedding_forward(x, tokens, wte, T, C);       // x = wte[tokens]
//   ...
//   embedding_backward(dwte, dx, tokens, T, C);    // dwte[tokens[t]] += dx[t]
//
// Preconditions: every tokens[t] lies in [0, V) (the caller validates ids).

#ifndef CHUNKFLOW_KERNELS_CPU_EMBEDDING_H_
#define CHUNKFLOW_KERNELS_CPU_EMBEDDING_H_

#include <cstdint>

namespace chunkflow::kernels::cpu {

// out[t, :] = wte[tokens[t], :].
void embedding_forward(float* out,            // (T, C)
                       const int32_t* tokens, // (T)
                       const float* wte,      // (V, C)
                       int64_t T, int64_t C);

// dwte[tokens[t], :] += dout[t, :] for every t. Correct when a token repeats:
// threads own disjoint column blocks, so no two threads write the same float,
// and each element sums its contributions in ascending t (deterministic).
void embedding_backward(float* dwte,           // (V, C) +=
                        const float* dout,     // (T, C)
                        const int32_t* tokens, // (T)
                        int64_t T, int64_t C);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_EMBEDDING_H_
