// Fully connected layer y = x W^T + b, with W stored (OC, IC) as in
// torch.nn.Linear and HF checkpoints. The GEMMs go to OpenBLAS (cblas_sgemm).
//
// Gradient contract (whole project): every gradient output is ACCUMULATED
// (+=), parameter and activation gradients alike; callers zero the buffers.
// Forward outputs are overwritten (=). Row-major fp32 unless noted.
//
// Usage (q projection of a Qwen2 layer, C -> n_heads * head_dim, with bias):
//   linear_forward(q, x, wq, bq, T, C, n_heads * head_dim);
//   ...
//   linear_backward(dx, dwq, dbq, dq, x, wq, T, C, n_heads * head_dim);

#ifndef CHUNKFLOW_KERNELS_CPU_LINEAR_H_
#define CHUNKFLOW_KERNELS_CPU_LINEAR_H_

#include <cstdint>

namespace chunkflow::kernels::cpu {

// out[t, o] = sum_i inp[t, i] * weight[o, i] + (bias ? bias[o] : 0).
void linear_forward(float* out,          // (T, OC)
                    const float* inp,    // (T, IC)
                    const float* weight, // (OC, IC)
                    const float* bias,   // (OC) or nullptr
                    int64_t T, int64_t IC, int64_t OC);

//   dinp    += dout W        (skipped when dinp is nullptr, e.g. the first layer)
//   dweight += dout^T inp
//   dbias   += sum_t dout[t] (skipped when dbias is nullptr, i.e. no bias)
void linear_backward(float* dinp,         // (T, IC) += or nullptr
                     float* dweight,      // (OC, IC) +=
                     float* dbias,        // (OC) += or nullptr
                     const float* dout,   // (T, OC)
                     const float* inp,    // (T, IC)
                     const float* weight, // (OC, IC)
                     int64_t T, int64_t IC, int64_t OC);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_LINEAR_H_
