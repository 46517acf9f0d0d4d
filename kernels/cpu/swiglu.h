// SwiGLU activation of the Llama/Qwen2 MLP, elementwise over N = T * I:
//   out = silu(gate) * up,   silu(x) = x * sigmoid(x).
// (The gate/up/down projections are separate linear_* calls.)
//
// Gradient contract (whole project): every gradient output is ACCUMULATED
// (+=), parameter and activation gradients alike; callers zero the buffers.
// Forward outputs are overwritten (=). Row-major fp32 unless noted.
//
// Usage:
//   linear_forward(g, x, w_gate, nullptr, T, C, I);
//   linear_forward(u, x, w_up, nullptr, T, C, I);
//   swiglu_forward(h, g, u, T * I);
//   ...
//   swiglu_backward(dg, du, dh, g, u, T * I);

#ifndef CHUNKFLOW_KERNELS_CPU_SWIGLU_H_
#define CHUNKFLOW_KERNELS_CPU_SWIGLU_H_

#include <cstdint>

namespace chunkflow::kernels::cpu {

// out[n] = gate[n] * sigmoid(gate[n]) * up[n].
void swiglu_forward(float* out,        // (N)
                    const float* gate, // (N)
                    const float* up,   // (N)
                    int64_t N);

// With s = sigmoid(gate[n]):
//   dgate[n] += dout[n] * up[n] * s * (1 + gate[n] * (1 - s))
//   dup[n]   += dout[n] * gate[n] * s
void swiglu_backward(float* dgate,      // (N) +=
                     float* dup,        // (N) +=
                     const float* dout, // (N)
                     const float* gate, // (N)
                     const float* up,   // (N)
                     int64_t N);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_SWIGLU_H_
