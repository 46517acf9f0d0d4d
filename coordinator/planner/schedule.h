// State-aware chunk scheduling inside 1F1B: the op list of every (dp, stage).
//
// Per dp rank the chunks form two streams that every stage runs in the same
// order:
//   forward stream   first-sweep forwards, standalone chunks then chains
//                    (ChainPlacement::kLast) or chains first (kFirst);
//   backward stream  entries of [recompute forwards..., one backward].
//
// A chain c0..c(n-1) with knob K forwards in order; only the last K keep their
// activations, the others keep their stage input and write K/V to the state
// store. Its backward runs c(n-1) down to c0: the last K use their kept
// activations; the rest go in groups of K from the top, each group recomputed
// in order (keeping activations) right before its backwards. So no more than K
// chunks of a sequence hold activations at once on any stage. Standalone chunks
// forward once and backward once (with full recompute: forward dropping, then
// recompute + backward).
//
// 1F1B: before its i-th backward entry (1-based) stage s of p has run
//   f_s(i) = min(m, max(N_i, p - s + i - 1))
// forwards, where m is the stream's length and N_i the furthest forward the
// first i entries need. Without chains N_i = i and this is Megatron's 1F1B
// (p - s - 1 warm-up forwards, then one forward per backward); a chain's first
// backward needs all its forwards, which lengthens the warm-up just enough.
// f_s(i) never grows with s, so a stage is always ahead of the next one in
// forwards and the same order of backwards on every stage cannot deadlock.
//
// Worked example: p = 2, a standalone chunk s, then a chain c0..c3 with K = 2.
//   forward stream:  s  c0(drop)  c1(drop)  c2  c3
//   backward stream: [B s] [B c3] [B c2] [R c0, R c1, B c1] [B c0]
//   stage 0: F s, F c0, B s, F c1, F c2, F c3, B c3, B c2, R c0, R c1, B c1, B c0
//   stage 1: F s, B s, F c0, F c1, F c2, F c3, B c3, B c2, R c0, R c1, B c1, B c0
// (R = forward with recompute = true.)
//
//   Plan plan = ...;  // chunks with dp set (balance.h)
//   absl::Status s = BuildStageOps(ChainPlacement::kLast, &plan);

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_SCHEDULE_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_SCHEDULE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "coordinator/planner/plan.h"

namespace chunkflow::planner {

enum class ChainPlacement : uint8_t { kLast = 0, kFirst = 1 };

// Fills plan->stage_ops from plan->chunks (dp set), plan->k, plan->pp and
// plan->full_recompute (which keeps no chunk's activations, chains included).
// Errors: INVALID_ARGUMENT for k < 1, pp < 1, dp < 1, a chunk whose dp is
// outside [0, dp), or a chain whose chunks are not consecutive ids on one rank.
absl::Status BuildStageOps(ChainPlacement placement, Plan* plan);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_SCHEDULE_H_
