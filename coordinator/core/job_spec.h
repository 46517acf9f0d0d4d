// Validation and defaults of a submitted job (chunkflow.v1.JobSpec), shared by
// the coordinator's SubmitJob and its restart path.
//
// proto3 cannot tell an unset number from 0, so 0 means "the default" for the
// fields below; a negative value, or a value the model or dataset cannot
// take, is INVALID_ARGUMENT naming the field as `spec.<field>`.
//
//   absl::StatusOr<ResolvedJob> r = ResolveJobSpec(request.spec());
//   if (!r.ok()) return r.status();          // e.g. "spec.pp is 4 but the model has 2 layers"
//   r->spec;                                 // defaults filled in

#ifndef CHUNKFLOW_COORDINATOR_CORE_JOB_SPEC_H_
#define CHUNKFLOW_COORDINATOR_CORE_JOB_SPEC_H_

#include <memory>

#include "absl/status/statusor.h"
#include "dataset/tokens.h"
#include "proto/chunkflow.pb.h"
#include "worker/engine/model_config.h"

namespace chunkflow::coordinator {

// Defaults for fields left 0 / empty.
inline constexpr int64_t kDefaultChunkSize = 4096;
inline constexpr double kDefaultLr = 1e-3;

struct ResolvedJob {
  chunkflow::v1::JobSpec spec;  // defaults filled in
  engine::ModelConfig config;   // from spec.model (tiny Qwen2 preset when empty)
  std::unique_ptr<dataset::TokenSource> data;
};

// Fills defaults (dp, pp 1; schedule.chunk_size 4096, k 1, balance cost
// model; optimizer adamw, lr 1e-3, betas 0.9/0.95, eps 1e-8) and checks
// everything a worker would trip on later. Errors: INVALID_ARGUMENT naming
// the field (negative counts, steps or global_batch < 1, pp above the
// model's layers, global_batch above the dataset's documents, an unknown
// optimizer, a bad model config, checkpoint_every without checkpoint_dir);
// NOT_FOUND naming spec.model.path or spec.dataset.path when missing.
absl::StatusOr<ResolvedJob> ResolveJobSpec(const chunkflow::v1::JobSpec& spec);

}  // namespace chunkflow::coordinator

#endif  // CHUNKFLOW_COORDINATOR_CORE_JOB_SPEC_H_
