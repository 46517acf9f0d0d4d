// Rotary position embedding, HF "rotate_half" layout (Llama/Qwen2): within
// each head the vector is split into halves x = [x1 | x2] of head_dim / 2, and
//   out1 = x1 * cos - x2 * sin,   out2 = x2 * cos + x1 * sin,
// with angle[i] = (float)position * inv_freq[i] and
//   inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / head_dim),
// all in fp32 exactly as HF computes it (`1.0 / (base ** (arange(0, dim, 2).float()
// / dim))`, then `inv_freq @ position_ids.float()`). Computing the angle in
// double instead moves results by ~1e-3 at position 16000, so fp32 it is.
//
// Gradient contract (whole project): every gradient output is ACCUMULATED
// (+=), parameter and activation gradients alike; callers zero the buffers.
// Forward outputs are overwritten (=). Row-major fp32 unless noted.
//
// Usage (q of shape (T, n_heads, head_dim), rotated in place):
//   rope_forward(q, q, positions, T, n_heads, head_dim, 1e6f);
//   ...
//   rope_backward(dq_pre, dq, positions, T, n_heads, head_dim, 1e6f);
//
// Preconditions: head_dim is even.

#ifndef CHUNKFLOW_KERNELS_CPU_ROPE_H_
#define CHUNKFLOW_KERNELS_CPU_ROPE_H_

#include <cstdint>

namespace chunkflow::kernels::cpu {

// Rotates every head of every token by its position. out may alias inp.
void rope_forward(float* out,               // (T, n_heads, head_dim)
                  const float* inp,         // (T, n_heads, head_dim)
                  const int64_t* positions, // (T)
                  int64_t T, int64_t n_heads, int64_t head_dim, float theta);

// The transpose rotation (rotate by -angle), accumulated:
//   dinp1 += dout1 * cos + dout2 * sin,   dinp2 += dout2 * cos - dout1 * sin.
// dinp must not alias dout.
void rope_backward(float* dinp,              // (T, n_heads, head_dim) +=
                   const float* dout,        // (T, n_heads, head_dim)
                   const int64_t* positions, // (T)
                   int64_t T, int64_t n_heads, int64_t head_dim, float theta);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_ROPE_H_
