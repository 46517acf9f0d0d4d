// JSON form of a step plan, as `chunkflowctl plan --format json` writes it:
//
//   {"step": 0, "strategy": "chunkflow", "chunk_size": 8192, "k": 2,
//    "chunks": [{"id": 0, "dp": 1, "pieces": [{"seq": 17, "offset": 0,
//                                              "length": 8192}]}, ...],
//    "ops": [{"dp": 0, "stage": 0, "list": [{"type": "forward", "chunk": 3,
//             "keep_activations": true, "recompute": false}, ...]}, ...],
//    "sim": {"makespan_s": 1.25, "bubble_ratio": 0.08,
//            "peak_memory_bytes": [...], ...}}
//
// `seq` is the document index in the dataset. Keys are written in a fixed
// order, so equal plans give equal bytes.

#ifndef CHUNKFLOW_COORDINATOR_PLANNER_PLAN_JSON_H_
#define CHUNKFLOW_COORDINATOR_PLANNER_PLAN_JSON_H_

#include <cstdint>

#include "coordinator/planner/plan.h"
#include "coordinator/planner/simulator.h"
#include "nlohmann/json.hpp"

namespace chunkflow::planner {

// ordered_json keeps insertion order: the output is stable byte for byte.
nlohmann::ordered_json StepToJson(int64_t step, const Plan& plan, const SimResult* sim);
nlohmann::ordered_json SimToJson(const SimResult& sim);

}  // namespace chunkflow::planner

#endif  // CHUNKFLOW_COORDINATOR_PLANNER_PLAN_JSON_H_
