// Refits the planner's cost model from op times the workers measured.
//
// Per stage, forward seconds (first forwards and recomputes alike) are fitted
// by least squares to  linear * tokens + quadratic * attention_pairs + fixed
// with every coefficient >= 0 (the model's terms are costs); the backward
// ratio is the measured backward seconds over the fitted forward seconds of
// the same ops, over the stages refitted. A stage with fewer than
// `min_samples` forward samples keeps the prior's coefficients (and its
// backwards do not count in the ratio; with no stage refitted the prior's
// ratio stays); one whose samples cannot separate
// the terms (every op the same shape) keeps the prior's shape, scaled to the
// measured times.
//
//   std::vector<OpSample> samples = ...;   // from StepReport.timings
//   absl::StatusOr<CostModel> fitted = FitCostModel(samples, prior, {});
//   if (fitted.ok()) request.cost = *fitted;  // the next steps balance with it

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_COST_FIT_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_COST_FIT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/planner/cost_model.h"

namespace chunkflow::planner {

struct OpSample {
  int32_t stage = 0;
  bool backward = false;
  int64_t tokens = 0;
  int64_t attention_pairs = 0;
  double seconds = 0;
};

struct CostFitOptions {
  int32_t min_samples = 8;  // forward samples a stage needs to be refitted
};

// Errors: INVALID_ARGUMENT for a sample with a stage outside the prior's
// stages, negative tokens or pairs, or seconds that are negative or not
// finite (naming the sample's index); the prior's own errors
// (ValidateCostModel).
absl::StatusOr<CostModel> FitCostModel(const std::vector<OpSample>& samples,
                                       const CostModel& prior, const CostFitOptions& options);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_COST_FIT_H_
