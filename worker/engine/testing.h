// Test helpers shared by the engine tests (CPU and CUDA): random batches and
// weights scaled up so every gradient is far from zero.

#ifndef CHUNKFLOW_WORKER_ENGINE_TESTING_H_
#define CHUNKFLOW_WORKER_ENGINE_TESTING_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "worker/engine/chunk_input.h"
#include "worker/engine/params.h"

namespace chunkflow::engine::testing {

// Sequence i has id 3i + 1 and lengths[i] random tokens; with some_ignored,
// every other sequence has labels with every fifth target ignored.
inline StepData RandomData(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed,
                           bool some_ignored = true) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab) - 1);
  StepData d;
  for (size_t i = 0; i < lengths.size(); ++i) {
    SequenceData s;
    s.id = static_cast<int64_t>(i) * 3 + 1;
    for (int64_t p = 0; p < lengths[i]; ++p) s.tokens.push_back(tok(rng));
    if (some_ignored && i % 2 == 0) {
      s.labels = s.tokens;
      for (size_t p = 0; p < s.labels.size(); p += 5) s.labels[p] = kIgnoreIndex;
    }
    d.sequences[s.id] = s;
  }
  return d;
}

// Matrices x5, norm weights 1 + 5 (w - 1): large enough weights that every
// gradient is far from zero.
inline void ScaleUpWeights(StageParams& p) {
  for (const ParamTensor& t : p.tensors()) {
    float* w = p.values().data() + t.offset;
    const bool norm = t.shape.size() == 1 && t.name.find("bias") == std::string::npos;
    for (int64_t i = 0; i < t.numel; ++i) w[i] = norm ? 1.0f + 5.0f * (w[i] - 1.0f) : 5.0f * w[i];
  }
}

}  // namespace chunkflow::engine::testing

#endif  // CHUNKFLOW_WORKER_ENGINE_TESTING_H_
