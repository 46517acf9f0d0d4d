#include "coordinator/core/job_spec.h"

#include <sys/stat.h>

#include <cmath>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/params.h"
#include "worker/engine/safetensors.h"

namespace chunkflow::coordinator {
namespace {

absl::Status Negative(const char* field, double value) {
  return absl::InvalidArgumentError(
      absl::StrCat("spec.", field, " must be >= 0 (0 means the default), got ", value));
}

// Prefixes an error with the field it came from, keeping its code.
absl::Status Named(const char* field, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat("spec.", field, ": ", s.message()));
}

}  // namespace

absl::StatusOr<ResolvedJob> ResolveJobSpec(const chunkflow::v1::JobSpec& in) {
  ResolvedJob out;
  chunkflow::v1::JobSpec& spec = out.spec;
  spec = in;
  if (spec.dp() < 0) return Negative("dp", spec.dp());
  if (spec.pp() < 0) return Negative("pp", spec.pp());
  if (spec.dp() == 0) spec.set_dp(1);
  if (spec.pp() == 0) spec.set_pp(1);
  if (spec.dp() > 4096 || spec.pp() > 4096) {
    return absl::InvalidArgumentError(absl::StrCat("spec.dp x spec.pp (", spec.dp(), " x ",
                                                   spec.pp(), ") is above 4096 per axis"));
  }
  if (spec.steps() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("spec.steps must be >= 1, got ", spec.steps()));
  }
  if (spec.global_batch() < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.global_batch must be >= 1, got ", spec.global_batch()));
  }
  chunkflow::v1::ScheduleParams* sched = spec.mutable_schedule();
  if (sched->chunk_size() < 0) return Negative("schedule.chunk_size", sched->chunk_size());
  if (sched->k() < 0) return Negative("schedule.k", sched->k());
  if (sched->chunk_size() == 0) sched->set_chunk_size(kDefaultChunkSize);
  if (sched->k() == 0) sched->set_k(1);
  if (sched->balance() == chunkflow::v1::BALANCE_POLICY_UNSPECIFIED) {
    sched->set_balance(chunkflow::v1::BALANCE_POLICY_COST_MODEL);
  }
  if (spec.memory_budget_bytes() < 0) {
    return Negative("memory_budget_bytes", static_cast<double>(spec.memory_budget_bytes()));
  }
  if (spec.checkpoint_every() < 0) {
    return Negative("checkpoint_every", static_cast<double>(spec.checkpoint_every()));
  }
  if (spec.checkpoint_every() > 0 && spec.checkpoint_dir().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("spec.checkpoint_every is ",
                                                   spec.checkpoint_every(),
                                                   " but spec.checkpoint_dir is empty"));
  }

  chunkflow::v1::OptimizerConfig* opt = spec.mutable_optimizer();
  if (opt->name().empty()) opt->set_name("adamw");
  if (opt->name() != "adamw" && opt->name() != "sgd") {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.optimizer.name must be 'adamw' or 'sgd', got '", opt->name(), "'"));
  }
  struct {
    const char* field;
    double value;
  } const numbers[] = {{"lr", opt->lr()},
                       {"weight_decay", opt->weight_decay()},
                       {"beta1", opt->beta1()},
                       {"beta2", opt->beta2()},
                       {"eps", opt->eps()},
                       {"clip_norm", opt->clip_norm()}};
  for (const auto& n : numbers) {
    if (!std::isfinite(n.value) || n.value < 0) {
      return absl::InvalidArgumentError(absl::StrCat("spec.optimizer.", n.field,
                                                     " must be finite and >= 0, got ", n.value));
    }
  }
  if (opt->beta1() >= 1 || opt->beta2() >= 1) {
    return absl::InvalidArgumentError(absl::StrCat("spec.optimizer.beta1 and beta2 must be < 1, got ",
                                                   opt->beta1(), " and ", opt->beta2()));
  }
  if (opt->lr() == 0) opt->set_lr(kDefaultLr);
  if (opt->beta1() == 0) opt->set_beta1(0.9);
  if (opt->beta2() == 0) opt->set_beta2(0.95);
  if (opt->eps() == 0) opt->set_eps(1e-8);

  // The model: a directory with config.json, an inline config, or the preset.
  const chunkflow::v1::ModelSpec& model = spec.model();
  if (!model.path().empty() && !model.config_json().empty()) {
    return absl::InvalidArgumentError("spec.model: set path or config_json, not both");
  }
  out.config = engine::TinyQwen2Config();
  if (!model.path().empty()) {
    struct stat st;
    if (::stat(model.path().c_str(), &st) != 0) {
      return absl::NotFoundError(absl::StrCat("spec.model.path: ", model.path(), " does not exist"));
    }
    absl::StatusOr<engine::ModelConfig> c = engine::LoadHfConfig(model.path());
    if (!c.ok()) return Named("model.path", c.status());
    out.config = *c;
    // The workers load these weights (a stage that found none would train
    // from random ones): they must be there. A shape alone is config_json.
    if (absl::StatusOr<engine::SafetensorsReader> w = engine::SafetensorsReader::Open(model.path());
        !w.ok()) {
      return absl::Status(w.status().code(),
                          absl::StrCat("spec.model.path: ", model.path(), " holds no weights the ",
                                       "workers could load (", w.status().message(),
                                       "); for random weights of a shape, pass its config.json "
                                       "as --model_config"));
    }
  } else if (!model.config_json().empty()) {
    absl::StatusOr<engine::ModelConfig> c =
        engine::ParseHfConfig(model.config_json(), "spec.model.config_json");
    if (!c.ok()) return Named("model.config_json", c.status());
    out.config = *c;
  }
  if (absl::Status s = engine::ValidateModelConfig(out.config); !s.ok()) return Named("model", s);
  if (spec.pp() > out.config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat("spec.pp is ", spec.pp(), " but the model has ",
                                                   out.config.num_hidden_layers,
                                                   " layers (at most one stage per layer)"));
  }
  if (absl::Status s = engine::PartitionStages(out.config.num_hidden_layers, spec.pp()).status();
      !s.ok()) {
    return Named("pp", s);
  }

  if (spec.dataset().path().empty()) {
    return absl::InvalidArgumentError("spec.dataset.path is empty");
  }
  absl::StatusOr<std::unique_ptr<dataset::TokenSource>> data =
      dataset::TokenSource::Open(spec.dataset().path(), out.config.vocab_size);
  if (!data.ok()) return Named("dataset.path", data.status());
  out.data = std::move(*data);
  if (spec.global_batch() > out.data->num_documents()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.global_batch is ", spec.global_batch(), " but ", spec.dataset().path(), " has only ",
        out.data->num_documents(), " documents"));
  }
  return out;
}

}  // namespace chunkflow::coordinator
