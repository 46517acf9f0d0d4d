// Softmax cross-entropy over a vocabulary, one loss per token, with HF/torch's
// ignore index: a token whose target is kIgnoreIndex has loss 0 and no gradient.
// The mean over non-ignored tokens (or any other weighting) is the caller's:
// it goes in through dlosses.
//
// Gradient contract (whole project): every gradient output is ACCUMULATED
// (+=), parameter and activation gradients alike; callers zero the buffers.
// Forward outputs are overwritten (=). Row-major fp32 unless noted.
//
// Usage (mean loss over the n_valid non-ignored tokens):
//   cross_entropy_forward(losses, logits, targets, T, V);
//   std::vector<float> dlosses(T, 1.0f / n_valid);
//   cross_entropy_backward(dlogits, logits, targets, dlosses.data(), T, V);
//
// Preconditions: every target is in [0, V) or kIgnoreIndex (caller validates).

#ifndef CHUNKFLOW_KERNELS_CPU_CROSS_ENTROPY_H_
#define CHUNKFLOW_KERNELS_CPU_CROSS_ENTROPY_H_

#include <cstdint>

namespace chunkflow::kernels::cpu {

// Target value that marks a token without a loss (torch's default ignore_index).
inline constexpr int32_t kIgnoreIndex = -100;

// losses[t] = logsumexp(logits[t]) - logits[t, targets[t]], or 0 for ignored
// targets. Stable: the row max is subtracted and the exp-sum is kept in double.
void cross_entropy_forward(float* losses,         // (T)
                           const float* logits,   // (T, V)
                           const int32_t* targets,// (T)
                           int64_t T, int64_t V);

// dlogits[t] += dlosses[t] * (softmax(logits[t]) - onehot(targets[t]));
// rows with ignored targets are left untouched. Recomputes the row's
// logsumexp (nothing is cached between forward and backward).
void cross_entropy_backward(float* dlogits,         // (T, V) +=
                            const float* logits,    // (T, V)
                            const int32_t* targets, // (T)
                            const float* dlosses,   // (T)
                            int64_t T, int64_t V);

}  // namespace chunkflow::kernels::cpu

#endif  // CHUNKFLOW_KERNELS_CPU_CROSS_ENTROPY_H_
