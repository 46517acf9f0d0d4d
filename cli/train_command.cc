#include "cli/train_command.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <cmath>
#include <map>
#include <memory>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/cursor.h"
#include "kernels/cpu/blas_core.h"
#include "dataset/tokens.h"
#include "nlohmann/json.hpp"
#include "worker/engine/cuda/cuda_engine.h"
#include "worker/engine/model_config.h"
#include "worker/engine/safetensors.h"

namespace chunkflow::cli {
namespace {

using engine::Engine;

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

double MiB(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

absl::StatusOr<engine::ModelConfig> ModelConfigOf(const ModelSource& m) {
  if (!m.model_dir.empty() && !m.model_config.empty()) {
    return absl::InvalidArgumentError("pass --model_dir or --model_config, not both");
  }
  if (m.model_dir.empty() && m.model_config.empty()) return engine::TinyQwen2Config();
  return engine::LoadHfConfig(m.model_dir.empty() ? m.model_config : m.model_dir);
}

// Weights (and the optimizer state beside them) from --model_dir, or random
// ones; E is engine::Engine or the CUDA engine.
template <typename E>
absl::Status InitModel(E& e, const ModelSource& m, std::ostream& progress) {
  const engine::ModelConfig& config = e.config();
  if (!m.model_dir.empty()) {
    if (absl::Status s = e.LoadWeights(m.model_dir); !s.ok()) return s;
    const std::string opt = m.model_dir + "/optimizer.safetensors";
    if (m.load_optimizer && Exists(opt)) {
      if (absl::Status s = e.LoadOptimizer(opt); !s.ok()) return s;
      progress << "resuming the optimizer at step " << e.optimizer_step() << " from " << opt
               << "\n";
    }
    return absl::OkStatus();
  }
  if constexpr (std::is_void_v<decltype(e.InitRandom(m.seed))>) {
    e.InitRandom(m.seed);
  } else if (absl::Status s = e.InitRandom(m.seed); !s.ok()) {
    return s;
  }
  progress << "random " << engine::ArchitectureName(config.arch) << " model (hidden "
           << config.hidden_size << ", " << config.num_hidden_layers << " layers, vocab "
           << config.vocab_size << "), seed " << m.seed
           << (m.model_config.empty() ? " (no --model_dir or --model_config: the tiny preset)"
                                      : "")
           << "\n";
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Engine>> LoadModel(const ModelSource& m, std::ostream& progress) {
  absl::StatusOr<engine::ModelConfig> config = ModelConfigOf(m);
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<Engine>> e = Engine::Create(*config, m.stages);
  if (!e.ok()) {
    return absl::Status(e.status().code(), absl::StrCat("--stages: ", e.status().message()));
  }
  if (absl::Status s = InitModel(**e, m, progress); !s.ok()) return s;
  return e;
}

absl::StatusOr<std::unique_ptr<engine::cuda::CudaEngine>> LoadCudaModel(
    const ModelSource& m, const std::string& precision, const std::string& offload_state,
    std::ostream& progress) {
  if (precision != "bf16" && precision != "fp32") {
    return absl::InvalidArgumentError(
        absl::StrCat("--precision must be bf16 or fp32, got '", precision, "'"));
  }
  absl::StatusOr<engine::cuda::StateOffload> offload =
      engine::cuda::ParseStateOffload(offload_state);
  if (!offload.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--offload_state: ", offload.status().message()));
  }
  absl::StatusOr<engine::ModelConfig> config = ModelConfigOf(m);
  if (!config.ok()) return config.status();
  if (absl::StatusOr<std::vector<engine::StageRange>> r =
          engine::PartitionStages(config->num_hidden_layers, m.stages);
      !r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat("--stages: ", r.status().message()));
  }
  engine::cuda::CudaEngineOptions co;
  co.precision = precision == "fp32" ? engine::cuda::Precision::kFp32
                                     : engine::cuda::Precision::kBf16;
  co.offload_state = *offload;
  absl::StatusOr<std::unique_ptr<engine::cuda::CudaEngine>> e =
      engine::cuda::CudaEngine::Create(*config, m.stages, co);
  if (!e.ok()) return e.status();
  if (absl::Status s = InitModel(**e, m, progress); !s.ok()) return s;
  return e;
}

// `dir` (if set) exists, with its parents, and a file can be created in it.
absl::Status CheckWritableDir(const std::string& dir) {
  if (dir.empty()) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("--output_dir ", dir, ": cannot create it: ", ec.message()));
  }
  const std::string probe = dir + "/.chunkflow-write-test";
  std::ofstream(probe) << "";
  if (!std::filesystem::exists(probe, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--output_dir ", dir, ": cannot write into it (permissions?)"));
  }
  std::filesystem::remove(probe, ec);
  return absl::OkStatus();
}

// The files of a Hugging Face model folder the engine does not read but a
// fine-tuned copy needs beside its weights (generation's special tokens, the
// tokenizer): copied from --model_dir into --output_dir.
constexpr const char* kCarriedFiles[] = {
    "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
    "added_tokens.json"};

absl::Status CarryModelFiles(const std::string& from, const std::string& to) {
  if (from.empty() || to.empty()) return absl::OkStatus();
  std::error_code ec;
  if (std::filesystem::equivalent(from, to, ec)) return absl::OkStatus();
  for (const char* name : kCarriedFiles) {
    const std::string src = from + "/" + name;
    if (!std::filesystem::exists(src, ec)) continue;
    std::filesystem::copy_file(src, to + "/" + name,
                               std::filesystem::copy_options::overwrite_existing, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("cannot copy ", src, " into ", to, ": ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// A fresh id for one save: model.safetensors, optimizer.safetensors and
// trainer_state.json carry it, and a resume checks they agree.
std::string NewSaveId(int64_t next_batch) {
  std::random_device rd;
  return absl::StrFormat("%08x%08x-batch%d", rd(), rd(), next_batch);
}

// The documents of a global batch as engine sequences (id = document),
// checked against the model's vocabulary before the step starts: a bad id is
// reported with the dataset and its document, and the engine is untouched.
absl::StatusOr<engine::StepData> BatchData(const dataset::TokenSource& src,
                                           const std::string& dataset,
                                           const std::vector<int64_t>& docs, int64_t vocab) {
  engine::StepData data;
  for (int64_t doc : docs) {
    engine::SequenceData s;
    s.id = doc;  // the cursor never repeats a document within a batch
    if (absl::Status st = src.Read(doc, &s.tokens, &s.labels); !st.ok()) return st;
    auto bad = [&](const char* what, size_t p, int32_t v, const char* also) {
      return absl::InvalidArgumentError(absl::StrCat(dataset, ": document ", doc, " position ", p,
                                                     ": ", what, " ", v,
                                                     " is outside the model's vocabulary [0, ",
                                                     vocab, ")", also));
    };
    for (size_t p = 0; p < s.tokens.size(); ++p) {
      if (s.tokens[p] < 0 || s.tokens[p] >= vocab) return bad("token id", p, s.tokens[p], "");
    }
    for (size_t p = 0; p < s.labels.size(); ++p) {
      const int32_t l = s.labels[p];
      if (l != -100 && (l < 0 || l >= vocab)) return bad("label", p, l, " and is not -100");
    }
    data.sequences[s.id] = std::move(s);
  }
  return data;
}

// trainer_state.json beside a checkpoint: where the dataset cursor stands and
// what it was built from (the dataset, its document count and token total,
// the seed, the global batch), so a resumed run continues with the next batch
// of the same shuffle, and refuses to when any of them changed.
constexpr char kTrainerState[] = "trainer_state.json";

int64_t TotalTokens(const dataset::TokenSource& src) {
  int64_t n = 0;
  for (int64_t l : src.lengths()) n += l;
  return n;
}

absl::Status WriteTrainerState(const std::string& dir, const TrainCommandOptions& o,
                               const dataset::TokenSource* src, int64_t next_batch,
                               const std::string& save_id) {
  nlohmann::json j;
  j["format_version"] = 2;
  j["next_batch"] = next_batch;
  j["save"] = save_id;  // also in model.safetensors' and optimizer.safetensors' metadata
  j["dataset"] = o.dataset;
  j["num_documents"] = src->num_documents();
  j["total_tokens"] = TotalTokens(*src);
  j["seed"] = o.seed;
  j["global_batch"] = o.global_batch;
  const std::string path = dir + "/" + kTrainerState;
  std::ofstream out(path + ".tmp");
  out << j.dump(2) << "\n";
  out.close();
  if (!out || std::rename((path + ".tmp").c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

// The batch a resumed run starts at: 0 without a trainer state (said on
// `progress` when resuming from a checkpoint without one); an error if the
// state was written for another dataset (path, document count or token
// total), seed or global batch, or is not a trainer state.
absl::StatusOr<int64_t> ResumeBatch(const TrainCommandOptions& o, const dataset::TokenSource& src,
                                    std::ostream& progress) {
  if (o.model.model_dir.empty()) return 0;
  const std::string path = o.model.model_dir + "/" + kTrainerState;
  std::ifstream in(path);
  if (!in) {
    progress << "note: " << o.model.model_dir << " has no " << kTrainerState
             << " (not written by `train`): the dataset cursor starts at its first batch\n";
    return 0;
  }
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  // Every field's JSON type is checked before it is read: a hand-edited file
  // gets an error naming the field, not an exception. num_documents and
  // total_tokens (format 2) and save are checked when present.
  struct Want {
    const char* name;
    bool (nlohmann::json::*is)() const noexcept;
    const char* type;
    bool required;
  };
  for (const Want& w : {Want{"next_batch", &nlohmann::json::is_number_integer, "an integer", true},
                        Want{"dataset", &nlohmann::json::is_string, "a string", true},
                        Want{"seed", &nlohmann::json::is_number_unsigned,
                             "a non-negative integer", true},
                        Want{"global_batch", &nlohmann::json::is_number_integer, "an integer", true},
                        Want{"num_documents", &nlohmann::json::is_number_integer, "an integer",
                             false},
                        Want{"total_tokens", &nlohmann::json::is_number_integer, "an integer",
                             j.is_object() && j.contains("num_documents")},
                        Want{"save", &nlohmann::json::is_string, "a string", false}}) {
    const bool present = !j.is_discarded() && j.is_object() && j.contains(w.name);
    if ((present || w.required) && !(present && (j[w.name].*w.is)())) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": not a trainer state (", w.name,
                                                     " must be ", w.type, ")"));
    }
  }
  auto mismatch = [&](const std::string& what, const std::string& saved, const std::string& now) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " is ", now, " but the checkpoint's cursor (", path, ") was built with ", saved,
        "; resume with the same value or start from a copy without ", kTrainerState));
  };
  const std::string dataset = j["dataset"].get<std::string>();
  if (dataset != o.dataset) return mismatch("--dataset", dataset, o.dataset);
  const uint64_t seed = j["seed"].get<uint64_t>();
  if (seed != o.seed) return mismatch("--seed", std::to_string(seed), std::to_string(o.seed));
  const int64_t batch = j["global_batch"].get<int64_t>();
  if (batch != o.global_batch) {
    return mismatch("--global_batch", std::to_string(batch), std::to_string(o.global_batch));
  }
  // The shuffle is a function of the document count: a dataset that gained
  // or lost documents (or was rewritten) would repeat and skip documents.
  if (j.contains("num_documents")) {
    const std::string saved = absl::StrCat(j["num_documents"].get<int64_t>(), " documents and ",
                                           j["total_tokens"].get<int64_t>(), " tokens");
    const std::string now =
        absl::StrCat(src.num_documents(), " documents and ", TotalTokens(src), " tokens");
    if (saved != now) {
      return mismatch(absl::StrCat("the dataset ", o.dataset, " (it changed since?)"), saved, now);
    }
  } else {
    progress << "note: " << path << " predates the dataset check (format 1): make sure "
             << o.dataset << " has not changed since\n";
  }
  // trainer_state.json is written last: weights or optimizer state of
  // another save next to it mean a save into this folder was interrupted.
  if (j.contains("save")) {
    const std::string save = j["save"].get<std::string>();
    for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
      const std::string p = o.model.model_dir + "/" + file;
      absl::StatusOr<engine::SafetensorsReader> r = engine::SafetensorsReader::Open(p);
      if (!r.ok()) return r.status();
      auto it = r->metadata().find(engine::kSaveIdKey);
      const std::string id = it == r->metadata().end() ? "(none)" : it->second;
      if (id != save) {
        return absl::FailedPreconditionError(absl::StrCat(
            o.model.model_dir, " mixes two saves: ", file, " is from save ", id, ", ",
            kTrainerState, " from save ", save,
            " (a save into this folder was interrupted); resume from an intact copy"));
      }
    }
  }
  return j["next_batch"].get<int64_t>();
}

}  // namespace

// The steps and the checkpoint; E is engine::Engine or the CUDA engine.
template <typename E>
absl::Status TrainLoop(E& e, const TrainCommandOptions& o, const std::string& backend,
                       std::ostream& out, std::ostream& progress) {
  absl::StatusOr<std::unique_ptr<dataset::TokenSource>> src =
      dataset::TokenSource::Open(o.dataset, e.config().vocab_size);
  if (!src.ok()) return src.status();
  absl::StatusOr<int64_t> start = ResumeBatch(o, **src, progress);
  if (!start.ok()) return start.status();
  if (*start > 0) progress << "resuming the dataset cursor at batch " << *start << "\n";
  absl::StatusOr<DatasetCursor> cursor =
      DatasetCursor::Create((*src)->num_documents(), o.seed, o.global_batch);
  if (!cursor.ok()) return cursor.status();

  progress << "training " << o.steps << " steps of " << o.global_batch << " documents from "
           << o.dataset << " (" << (*src)->num_documents() << " documents), ChunkSize "
           << o.train.chunk_size << ", K " << o.train.k << ", " << o.model.stages << " stage(s), "
           << (o.train.optimizer == engine::OptimizerKind::kAdamW ? "adamw" : "sgd") << " lr "
           << o.train.lr << ", " << backend << "\n";
  double first_loss = 0, last_loss = 0, seconds = 0;
  int64_t tokens = 0, peak = 0;
  for (int64_t step = 0; step < o.steps; ++step) {
    absl::StatusOr<std::vector<int64_t>> docs = cursor->Batch(*start + step);
    if (!docs.ok()) return docs.status();
    absl::StatusOr<engine::StepData> data =
        BatchData(**src, o.dataset, *docs, e.config().vocab_size);
    if (!data.ok()) {
      // The steps before this one are trained and the engine is untouched:
      // keep them (bad input loses nothing committed).
      absl::Status keep = absl::OkStatus();
      std::string kept;
      if (step > 0 && !o.output_dir.empty()) {
        const std::string id = NewSaveId(*start + step);
        keep = e.Save(o.output_dir, id);
        if (keep.ok()) keep = CarryModelFiles(o.model.model_dir, o.output_dir);
        if (keep.ok()) keep = WriteTrainerState(o.output_dir, o, src->get(), *start + step, id);
        kept = keep.ok() ? absl::StrCat("; the ", step, " step(s) before it are saved in ",
                                        o.output_dir, " (resume with --model_dir=", o.output_dir, ")")
                         : absl::StrCat("; saving the steps before it failed too: ", keep.message());
      }
      return absl::Status(data.status().code(),
                          absl::StrCat("step ", step, ": ", data.status().message(), kept));
    }
    absl::StatusOr<engine::StepResult> r = e.TrainStep(*data, o.train);
    if (!r.ok()) {
      return absl::Status(r.status().code(), absl::StrCat("step ", step, ": ", r.status().message()));
    }
    if (step == 0) first_loss = r->loss;
    last_loss = r->loss;
    seconds += r->seconds;
    tokens += r->tokens;
    peak = std::max(peak, r->peak_bytes);
    progress << absl::StrFormat(
        "step %d/%d  loss %.4f  tokens %d  chunks %d  %.0f tokens/s  grad-norm %.3f  "
        "peak %.1f MiB (activations %.1f, state %.1f)\n",
        step + 1, o.steps, r->loss, r->tokens, r->chunks, r->tokens / std::max(r->seconds, 1e-9),
        r->grad_norm, MiB(r->peak_bytes), MiB(r->peak_activation_bytes),
        MiB(r->peak_state_bytes));
    if (r->peak_device_bytes > 0) {
      progress << absl::StrFormat("  device peak %.1f MiB (weights, gradients, AdamW included)\n",
                                  MiB(r->peak_device_bytes));
    }
    if (r->offloaded_sequences > 0) {
      progress << absl::StrFormat(
          "  state of %d sequence(s) offloaded to pinned host memory (it did not fit)\n",
          r->offloaded_sequences);
      if (r->pinned_mid_step_bytes > 0) {
        progress << absl::StrFormat(
            "  %.1f MiB of it pinned mid-step (the step-start prediction missed it)\n",
            MiB(r->pinned_mid_step_bytes));
      }
    }
    progress.flush();
  }
  if (!o.output_dir.empty()) {
    const std::string id = NewSaveId(*start + o.steps);
    if (absl::Status s = e.Save(o.output_dir, id); !s.ok()) return s;
    if (absl::Status s = CarryModelFiles(o.model.model_dir, o.output_dir); !s.ok()) return s;
    if (absl::Status s = WriteTrainerState(o.output_dir, o, src->get(), *start + o.steps, id);
        !s.ok()) {
      return s;
    }
  }
  out << absl::StrFormat(
      "trained %d steps, %d tokens in %.2f s (%.0f tokens/s); loss %.4f -> %.4f; peak %.1f MiB\n",
      o.steps, tokens, seconds, tokens / std::max(seconds, 1e-9), first_loss, last_loss, MiB(peak));
  if (!o.output_dir.empty()) out << "checkpoint: " << o.output_dir << "\n";
  return absl::OkStatus();
}

absl::Status RunTrainCommand(const TrainCommandOptions& o, std::ostream& out,
                             std::ostream& progress) {
  if (o.steps < 1) return absl::InvalidArgumentError(absl::StrCat("--steps must be >= 1, got ", o.steps));
  if (o.global_batch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--global_batch must be >= 1, got ", o.global_batch));
  }
  if (o.train.chunk_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--chunk_size must be >= 1, got ", o.train.chunk_size));
  }
  if (o.train.k < 1) return absl::InvalidArgumentError(absl::StrCat("--k must be >= 1, got ", o.train.k));
  if (!(o.train.lr >= 0) || !std::isfinite(o.train.lr)) {
    return absl::InvalidArgumentError(absl::StrCat("--lr must be finite and >= 0, got ", o.train.lr));
  }
  if (!(o.train.clip >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat("--clip must be >= 0, got ", o.train.clip));
  }
  if (!(o.train.weight_decay >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--weight_decay must be >= 0, got ", o.train.weight_decay));
  }
  if (absl::StatusOr<engine::cuda::StateOffload> m =
          engine::cuda::ParseStateOffload(o.offload_state);
      !m.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--offload_state: ", m.status().message()));
  }
  // Before any step: a checkpoint folder that cannot be written would
  // otherwise fail after the whole run.
  if (absl::Status s = CheckWritableDir(o.output_dir); !s.ok()) return s;
  if (o.device == "cuda") {
    absl::StatusOr<std::unique_ptr<engine::cuda::CudaEngine>> e =
        LoadCudaModel(o.model, o.precision, o.offload_state, progress);
    if (!e.ok()) return e.status();
    return TrainLoop(**e, o, absl::StrCat("CUDA engine (", o.precision, ")"), out, progress);
  }
  if (o.device != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be cpu or cuda, got '", o.device, "'"));
  }
  absl::StatusOr<std::unique_ptr<Engine>> e = LoadModel(o.model, progress);
  if (!e.ok()) return e.status();
  return TrainLoop(**e, o, absl::StrCat("OpenBLAS kernels ", kernels::cpu::BlasCoreName()), out,
                   progress);
}

// eval reads the weights only: no optimizer state (it is about twice their
// size, and a broken one has nothing to do with evaluating).
ModelSource EvalSource(ModelSource m) {
  m.load_optimizer = false;
  return m;
}

absl::Status RunEvalCommand(const EvalCommandOptions& o, std::ostream& out,
                            std::ostream& progress) {
  if (o.format != "table" && o.format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("--format must be 'table' or 'json', got '", o.format, "'"));
  }
  if (o.chunk_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--chunk_size must be >= 1, got ", o.chunk_size));
  }
  if (o.max_documents < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max_documents must be >= 0, got ", o.max_documents));
  }
  absl::StatusOr<std::unique_ptr<Engine>> e = LoadModel(EvalSource(o.model), progress);
  if (!e.ok()) return e.status();
  absl::StatusOr<std::unique_ptr<dataset::TokenSource>> src =
      dataset::TokenSource::Open(o.dataset, (*e)->config().vocab_size);
  if (!src.ok()) return src.status();
  int64_t n = (*src)->num_documents();
  if (o.max_documents > 0) n = std::min(n, o.max_documents);

  nlohmann::json docs = nlohmann::json::array();
  double sum = 0;
  int64_t count = 0;
  if (o.format == "table") {
    out << absl::StrFormat("%10s %10s %10s %12s %12s\n", "document", "tokens", "targets",
                           "mean loss", "perplexity");
  }
  for (int64_t doc = 0; doc < n; ++doc) {
    absl::StatusOr<engine::StepData> data =
        BatchData(**src, o.dataset, {doc}, (*e)->config().vocab_size);
    if (!data.ok()) return data.status();
    absl::StatusOr<std::map<int64_t, engine::SequenceLoss>> r = (*e)->Evaluate(*data, o.chunk_size);
    if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat("document ", doc, ": ",
                                                                     r.status().message()));
    const engine::SequenceLoss l = r->at(doc);
    const double mean = l.count > 0 ? l.sum / static_cast<double>(l.count) : 0.0;
    sum += l.sum;
    count += l.count;
    const int64_t len = (*src)->lengths()[doc];
    if (o.format == "table") {
      if (l.count > 0) {
        out << absl::StrFormat("%10d %10d %10d %12.4f %12.2f\n", doc, len, l.count, mean,
                               std::exp(mean));
      } else {
        out << absl::StrFormat("%10d %10d %10d %12s %12s\n", doc, len, l.count, "-", "-");
      }
    } else {
      docs.push_back({{"document", doc}, {"tokens", len}, {"targets", l.count}, {"mean_loss", mean}});
    }
    if ((doc + 1) % 100 == 0) progress << "evaluated " << doc + 1 << "/" << n << " documents\n";
  }
  const double mean = count > 0 ? sum / static_cast<double>(count) : 0.0;
  if (o.format == "table") {
    out << absl::StrFormat("%10s %10s %10d %12.4f %12.2f\n", "all", "", count, mean, std::exp(mean));
  } else {
    nlohmann::json j;
    j["documents"] = docs;
    j["targets"] = count;
    j["mean_loss"] = mean;
    out << j.dump(2) << "\n";
  }
  return absl::OkStatus();
}

}  // namespace chunkflow::cli
