// Helpers shared by the planner's tests: random batches and simple models.

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_TEST_UTIL_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <vector>

#include "coordinator/planner/cost_model.h"
#include "coordinator/planner/plan.h"

namespace chunkflow::planner::testing {

// A long-tailed batch: mostly short sequences, some up to max_len.
inline std::vector<Sequence> RandomBatch(uint64_t seed, int n, int64_t max_len) {
  std::mt19937_64 rng(seed);
  std::vector<Sequence> out;
  for (int i = 0; i < n; ++i) {
    const uint64_t r = rng();
    int64_t cap = (r % 10 == 0) ? max_len : std::max<int64_t>(1, max_len / 16);
    out.push_back({static_cast<int64_t>(i) * 3 + 1, 1 + static_cast<int64_t>((r >> 8) % cap)});
  }
  return out;
}

// Every stage costs the same: `linear` per token, `quad` per pair.
inline CostModel UniformCost(int32_t pp, double linear, double quad, double bwd = 2.0) {
  CostModel c;
  c.stages.assign(pp, StageCost{linear, quad, 0.0});
  c.backward_ratio = bwd;
  return c;
}

inline MemoryModel UniformMemory(int32_t pp) {
  MemoryModel m;
  m.static_bytes.assign(pp, 0);
  m.activation_bytes_per_token.assign(pp, 100.0);
  m.input_bytes_per_token.assign(pp, 1.0);
  m.state_bytes_per_token.assign(pp, 30.0);
  return m;
}

}  // namespace chunkflow::planner::testing

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_TEST_UTIL_H_
