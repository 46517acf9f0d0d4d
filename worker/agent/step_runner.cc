#include "worker/agent/step_runner.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <cmath>
#include <deque>
#include <map>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/optimizer.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model_config.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/pipeline.h"

namespace chunkflow::worker {
namespace {

namespace ecuda = ::chunkflow::engine::cuda;


// An activation or gradient buffer in the memory the links move: host
// vectors, or device arrays on the CUDA stage's device.
class IoBuffer {
 public:
  virtual ~IoBuffer() = default;
  virtual float* data() = 0;
};

class HostIo : public IoBuffer {
 public:
  explicit HostIo(int64_t n) : v_(static_cast<size_t>(n), 0.0f) {}
  float* data() override { return v_.data(); }

 private:
  std::vector<float> v_;
};

class DeviceIo : public IoBuffer {
 public:
  float* data() override { return a_.data(); }
  ecuda::DeviceArray<float>& array() { return a_; }

 private:
  ecuda::DeviceArray<float> a_;
};

// A send in flight and the buffer it reads, kept until it is done.
struct InFlight {
  std::unique_ptr<IoBuffer> buffer;
  std::unique_ptr<comm::PendingOp> op;  // destroyed first: waits for the send
};

// Frees the sends that are done, oldest first (all of them with `all`,
// waiting); the first error, if any.
absl::Status Reap(std::deque<InFlight>* sends, bool all) {
  absl::Status first;
  while (!sends->empty() && (all || sends->front().op->Done())) {
    absl::Status s = sends->front().op->Wait();
    if (first.ok() && !s.ok()) first = s;
    sends->pop_front();
  }
  return first;
}

absl::Status Annotate(const absl::Status& s, const std::string& what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

}  // namespace

StepRunner::StepRunner(const engine::ModelConfig& config, engine::StageRange range,
                       const StageLinks* links)
    : params_(config, range),
      stage_(&params_, &mem_),
      links_(links),
      m_(static_cast<size_t>(params_.numel()), 0.0f),
      v_(static_cast<size_t>(params_.numel()), 0.0f) {
  for (int64_t l = range.first_layer; l < range.end_layer; ++l) {
    const std::string prefix = absl::StrCat("model.layers.", l, ".");
    int64_t lo = params_.numel(), hi = 0, count = 0;
    for (const engine::ParamTensor& t : params_.tensors()) {
      if (!absl::StartsWith(t.name, prefix)) continue;
      lo = std::min(lo, t.offset);
      hi = std::max(hi, t.offset + t.numel);
      count += t.numel;
    }
    const bool contiguous = count > 0 && hi - lo == count;
    layer_ranges_.emplace_back(contiguous ? lo : 0, contiguous ? count : 0);
  }
}

StepRunner::~StepRunner() {
  overlapped_.clear();  // in-flight all-reduces read the device gradients
  cuda_stage_.reset();  // device arrays back to the allocator before the context goes
}

absl::StatusOr<std::unique_ptr<StepRunner>> StepRunner::Create(const engine::ModelConfig& config,
                                                               engine::StageRange range,
                                                               const StageLinks* links,
                                                               const StepRunnerOptions& options) {
  auto r = std::make_unique<StepRunner>(config, range, links);
  r->options_ = options;
  if (options.cuda_device < 0) return r;
  absl::StatusOr<std::unique_ptr<ecuda::DeviceContext>> ctx =
      ecuda::DeviceContext::Create(options.cuda_device, options.memory_budget_bytes);
  if (!ctx.ok()) return ctx.status();
  r->ctx_ = std::move(*ctx);
  ecuda::CudaStageOptions so;
  so.precision = options.precision;
  so.offload_state = options.offload_state;
  absl::StatusOr<std::unique_ptr<ecuda::CudaStage>> st =
      ecuda::CudaStage::Create(&r->params_, r->ctx_.get(), &r->mem_, so);
  if (!st.ok()) return st.status();
  r->cuda_stage_ = std::move(*st);
  return r;
}

absl::Status StepRunner::ParamsChanged() {
  if (!cuda_stage_) return absl::OkStatus();
  CF_RETURN_IF_ERROR(ctx_->Activate());
  CF_RETURN_IF_ERROR(cuda_stage_->UploadParams());
  return ctx_->Sync("upload weights");
}

absl::Status StepRunner::SyncToHost() {
  if (!cuda_stage_) return absl::OkStatus();
  CF_RETURN_IF_ERROR(cuda_stage_->DownloadParams());
  return cuda_stage_->GetMoments(&m_, &v_);
}

engine::StageExecutor& StepRunner::executor() {
  if (cuda_stage_) return *cuda_stage_;
  return stage_;
}

absl::StatusOr<WorkerStepResult> StepRunner::RunStep(const planner::Plan& plan, int32_t dp,
                                                     const engine::StepData& data,
                                                     int64_t global_targets,
                                                     const engine::TrainOptions& options) {
  if (absl::Status s = engine::ValidateTrainOptions(options); !s.ok()) return s;
  WorkerStepResult result;
  engine::StageExecutor& stage = executor();
  // Nothing of an earlier, failed step may still write the gradients.
  overlapped_.clear();
  overlapped_ranges_.clear();
  if (cuda_stage_) {
    CF_RETURN_IF_ERROR(ctx_->Activate());
    CF_RETURN_IF_ERROR(cuda_stage_->ZeroGrads());
    ctx_->allocator().ResetPeak();
  } else {
    params_.ZeroGrads();
  }
  stage.Reset();
  stage.ClearLosses();
  stage.set_loss_scale(global_targets > 0 ? 1.0f / static_cast<float>(global_targets) : 0.0f);
  mem_.ResetPeak();
  if (absl::Status s = RunOps(plan, dp, data, &result); !s.ok()) {
    // Finish (each bounded by the timeout) or abort the dp all-reduces
    // already started: none may outlive the failed step on the device.
    overlapped_.clear();
    stage.Reset();
    return s;
  }
  for (const auto& [seq, l] : stage.losses()) {
    result.loss_sum += l.sum;
    result.loss_count += l.count;
  }
  result.peak_bytes = mem_.peak();
  if (cuda_stage_) {
    result.peak_device_bytes = ctx_->allocator().peak_in_use();
    result.offloaded_sequences =
        static_cast<int64_t>(cuda_stage_->offloaded_this_step().size());
    result.pinned_mid_step_bytes = cuda_stage_->pinned_mid_step_bytes();
  }
  if (absl::Status s = ReduceAndUpdate(options, &result); !s.ok()) {
    overlapped_.clear();
    return s;
  }
  return result;
}

void StepRunner::PrepareDeviceStep(const planner::Plan& plan,
                                   const std::vector<planner::Op>& ops,
                                   const engine::StepData& data) {
  cuda_stage_->set_chunks_held(engine::MaxChunksHeld(ops));
  // Pin what offloaded state needs now, before any NCCL operation of the
  // step is in flight (cudaHostAlloc synchronises the device).
  cuda_stage_->PrepareStep(engine::StateTimelineOf(plan, ops, data));
}

absl::Status StepRunner::RunOps(const planner::Plan& plan, int32_t dp,
                                const engine::StepData& data, WorkerStepResult* result) {
  const engine::StageRange& r = params_.range();
  const int32_t pp = plan.pp;
  // This worker's stage: the one of the plan's partition whose layers it holds.
  absl::StatusOr<std::vector<engine::StageRange>> parts =
      engine::PartitionStages(params_.config().num_hidden_layers, pp);
  if (!parts.ok()) return parts.status();
  int32_t stage = -1;
  for (int32_t s = 0; s < pp; ++s) {
    if ((*parts)[s].first_layer == r.first_layer && (*parts)[s].end_layer == r.end_layer) stage = s;
  }
  if (stage < 0 || dp < 0 || dp >= plan.dp ||
      static_cast<size_t>(dp * pp + stage) >= plan.stage_ops.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the plan (dp ", plan.dp, ", pp ", pp, ") has no op list for dp ", dp, " and layers [",
        r.first_layer, ", ", r.end_layer, ")"));
  }
  const int64_t c = params_.config().hidden_size;
  const int64_t vocab = params_.config().vocab_size;
  std::map<int32_t, engine::ChunkInput> chunks;
  // One thread drives every link: sends start and stay in flight (their
  // buffers kept until done) while the next ops compute and receive, so two
  // neighbours that send to each other at once (1F1B's steady state) never
  // wait on each other. NCCL needs it so (its communicators must not be
  // used from several threads at once).
  std::deque<InFlight> in_flight;
  auto finish_sends = [&](bool all) -> absl::Status {
    absl::Status s = Reap(&in_flight, all);
    return s.ok() ? s : Annotate(s, "sending");
  };
  engine::StageExecutor& stage_exec = executor();
  // Device buffers when the links move device memory; host ones otherwise.
  const bool device_io = cuda_stage_ != nullptr && options_.device_links;
  auto new_io = [&](int64_t n, std::unique_ptr<IoBuffer>* out) -> absl::Status {
    if (!device_io) {
      *out = std::make_unique<HostIo>(n);
      return absl::OkStatus();
    }
    auto d = std::make_unique<DeviceIo>();
    CF_RETURN_IF_ERROR(d->array().AllocateZeroed(ctx_.get(), nullptr, engine::MemoryTracker::kScratch,
                                                 n, "activation / gradient message"));
    *out = std::move(d);
    return absl::OkStatus();
  };
  std::unique_ptr<IoBuffer> in, out;
  const std::vector<planner::Op>& ops = plan.ops(dp, stage).ops;
  if (cuda_stage_) PrepareDeviceStep(plan, ops, data);
  // With device links on a GPU, the dp all-reduce of a layer's gradients
  // starts as soon as the step's last backward op has finished that layer
  // (one bucket per layer), overlapping the layers still to go.
  size_t last_backward = ops.size();
  if (OverlapsDpAllReduce()) {
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].type == planner::OpType::kBackward) last_backward = i;
    }
  }
  auto overlap = [this](int64_t l) { return StartLayerAllReduce(l); };
  for (size_t i = 0; i < ops.size(); ++i) {
    const planner::Op& op = ops[i];
    auto it = chunks.find(op.chunk);
    if (it == chunks.end()) {
      if (op.chunk < 0 || op.chunk >= static_cast<int32_t>(plan.chunks.size())) {
        return absl::InvalidArgumentError(absl::StrCat("op ", i, " names chunk ", op.chunk,
                                                       ", not in the plan"));
      }
      absl::StatusOr<engine::ChunkInput> ci = engine::MakeChunkInput(plan.chunks[op.chunk], data, vocab);
      if (!ci.ok()) return ci.status();
      it = chunks.emplace(op.chunk, std::move(*ci)).first;
    }
    const engine::ChunkInput& chunk = it->second;
    const int64_t n = chunk.rows * c;
    const bool backward = op.type == planner::OpType::kBackward;
    comm::Communicator* recv_link = backward ? links_->grad_in : links_->act_in;
    const bool receives = recv_link != nullptr && (backward || !op.recompute);
    const bool sends = backward ? links_->grad_out != nullptr
                                : links_->act_out != nullptr && !op.recompute;
    if (receives) {
      CF_RETURN_IF_ERROR(new_io(n, &in));
      if (device_io) CF_RETURN_IF_ERROR(ctx_->Sync("zero the receive buffer"));
      absl::StatusOr<std::unique_ptr<comm::PendingOp>> r =
          recv_link->StartRecv(in->data(), n, /*peer=*/0, static_cast<uint32_t>(op.chunk));
      absl::Status s = r.ok() ? (*r)->Wait() : r.status();
      if (!s.ok()) {
        return Annotate(s, absl::StrCat("op ", i, " receiving chunk ", op.chunk));
      }
    }
    // The op's time starts once its input is here: the wait for the
    // neighbouring stage is pipeline idle time, not this stage's cost (the
    // cost model is fitted from these times).
    const auto start = std::chrono::steady_clock::now();
    CF_RETURN_IF_ERROR(new_io(n, &out));
    absl::Status ran;
    float* in_ptr = receives ? in->data() : nullptr;
    if (device_io) {
      // Device pointers straight into the stage.
      if (backward) {
        if (i == last_backward) cuda_stage_->set_layer_backward_hook(overlap);
        ran = cuda_stage_->BackwardDevice(chunk, in_ptr, out->data());
        cuda_stage_->set_layer_backward_hook(nullptr);
      } else {
        ran = cuda_stage_->ForwardDevice(chunk, in_ptr, out->data(),
                                         op.recompute          ? engine::ForwardKind::kRecompute
                                         : op.keep_activations ? engine::ForwardKind::kKeep
                                                               : engine::ForwardKind::kDrop);
      }
    } else {
      ran = engine::RunOp(stage_exec, op, chunk, in_ptr, out->data());
    }
    // A device op is done (and its output ready for another stream's
    // transport) when the stage's stream is: wait, which also makes the op's
    // time the device time the cost model needs.
    if (ran.ok() && cuda_stage_) ran = ctx_->Sync("op");
    if (!ran.ok()) {
      return Annotate(ran, absl::StrCat("op ", i));
    }
    // ...and ends with its compute: not the wait for earlier sends below.
    result->op_seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (sends) {
      comm::Communicator* link = backward ? links_->grad_out : links_->act_out;
      absl::StatusOr<std::unique_ptr<comm::PendingOp>> started =
          link->StartSend(out->data(), n, /*peer=*/1, static_cast<uint32_t>(op.chunk));
      if (!started.ok()) {
        return Annotate(started.status(), absl::StrCat("op ", i, " sending chunk ", op.chunk));
      }
      in_flight.push_back(InFlight{std::move(out), std::move(*started)});
    }
    CF_RETURN_IF_ERROR(finish_sends(/*all=*/false));
    out.reset();
    in.reset();
    if (backward) chunks.erase(op.chunk);
  }
  CF_RETURN_IF_ERROR(finish_sends(/*all=*/true));
  if (stage_exec.live_chunks() != 0 || stage_exec.live_sequences() != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the op list left ", stage_exec.live_chunks(), " chunk(s) without a backward and ",
        stage_exec.live_sequences(), " sequence(s) in the state store"));
  }
  return absl::OkStatus();
}

bool StepRunner::OverlapsDpAllReduce() const {
  return cuda_stage_ != nullptr && options_.device_links && links_->dp_group != nullptr;
}

absl::Status StepRunner::StartLayerAllReduce(int64_t l) {
  const auto [offset, count] = layer_ranges_[static_cast<size_t>(l)];
  if (count == 0) return absl::OkStatus();
  // The layer's gradient kernels must have finished before another stream
  // reads them.
  CF_RETURN_IF_ERROR(ctx_->Sync("layer gradients"));
  absl::StatusOr<std::unique_ptr<comm::PendingOp>> op =
      links_->dp_group->StartAllReduceSum(cuda_stage_->device_grads() + offset, count);
  if (!op.ok()) return Annotate(op.status(), absl::StrCat("all-reduce of layer ", l, " over dp"));
  overlapped_.push_back(std::move(*op));
  overlapped_ranges_.emplace_back(offset, count);
  return absl::OkStatus();
}

// After the op list: the dp all-reduce and the tied embedding's sum of the
// stage's gradients, the global norm, clipping and the update. On a GPU the
// gradients, weights and moments stay on the device: with device links the
// all-reduces read device memory, with host links the gradients go through
// the host for them.
absl::Status StepRunner::ReduceAndUpdate(const engine::TrainOptions& options,
                                         WorkerStepResult* result) {
  const bool device = cuda_stage_ != nullptr;
  const bool device_links = device && options_.device_links;
  if (device) CF_RETURN_IF_ERROR(ctx_->Sync("backward"));
  const int64_t numel = params_.numel();
  const engine::ParamTensor* embed = params_.Find("model.embed_tokens.weight");
  if (links_->tied != nullptr && embed == nullptr) {
    return absl::InternalError("a tied link on a stage without the embedding");
  }
  if (links_->dp_group != nullptr || links_->tied != nullptr) {
    if (device && !device_links) CF_RETURN_IF_ERROR(cuda_stage_->DownloadGrads());
    float* g = device_links ? cuda_stage_->device_grads() : params_.grads().data();
    if (links_->dp_group != nullptr) {
      // The buckets started during the backward, then the rest (the
      // embedding, the final norm and head, any layer not started). A rank
      // without a backward this step (no chunks) starts the same buckets
      // now, so every rank issues the same collectives in the same order.
      const bool had_backward = !overlapped_ranges_.empty();
      if (OverlapsDpAllReduce() && !had_backward) {
        for (int64_t l = static_cast<int64_t>(layer_ranges_.size()) - 1; l >= 0; --l) {
          CF_RETURN_IF_ERROR(StartLayerAllReduce(l));
        }
      }
      absl::Status first;
      for (std::unique_ptr<comm::PendingOp>& op : overlapped_) {
        absl::Status s = op->Wait();
        if (first.ok() && !s.ok()) first = s;
      }
      result->overlapped_allreduces = had_backward ? static_cast<int32_t>(overlapped_.size()) : 0;
      overlapped_.clear();
      if (!first.ok()) return Annotate(first, "all-reduce of gradients over dp");
      std::vector<std::pair<int64_t, int64_t>> done = overlapped_ranges_;
      std::sort(done.begin(), done.end());
      int64_t at = 0;
      done.emplace_back(numel, 0);
      for (const auto& [offset, count] : done) {
        if (offset > at) {
          if (absl::Status s = links_->dp_group->AllReduceSum(g + at, offset - at); !s.ok()) {
            return Annotate(s, "all-reduce of gradients over dp");
          }
        }
        at = std::max(at, offset + count);
      }
    }
    if (links_->tied != nullptr) {
      if (absl::Status s = links_->tied->AllReduceSum(g + embed->offset, embed->numel); !s.ok()) {
        return Annotate(s, "summing the tied embedding's gradients");
      }
    }
    if (device && !device_links) CF_RETURN_IF_ERROR(cuda_stage_->UploadGrads());
  }
  // Global norm: every stage's squares once (dp rank 0 contributes), as a
  // float pair so the sum keeps double precision.
  double sq = 0;
  if (device) {
    absl::StatusOr<double> squares = cuda_stage_->GradSquares();
    if (!squares.ok()) return squares.status();
    sq = *squares;
  } else {
    sq = engine::StageGradSquares(params_);
  }
  if (links_->world != nullptr) {
    const bool counts = links_->dp_group == nullptr || links_->dp_group->rank() == 0;
    const double mine = counts ? sq : 0.0;
    float pair[2] = {static_cast<float>(mine), 0.0f};
    pair[1] = static_cast<float>(mine - static_cast<double>(pair[0]));
    ecuda::DeviceArray<float> d;  // the pair in device memory for device links
    if (device_links) {
      CF_RETURN_IF_ERROR(
          d.Allocate(ctx_.get(), nullptr, engine::MemoryTracker::kScratch, 2, "gradient norm"));
      CF_RETURN_IF_ERROR(d.Upload(pair, 2));
      CF_RETURN_IF_ERROR(ctx_->Sync("gradient norm"));
    }
    if (absl::Status s = links_->world->AllReduceSum(device_links ? d.data() : pair, 2); !s.ok()) {
      return Annotate(s, "all-reduce of the gradient norm");
    }
    if (device_links) CF_RETURN_IF_ERROR(d.Download(pair, 2));
    sq = static_cast<double>(pair[0]) + static_cast<double>(pair[1]);
  }
  result->grad_norm = std::sqrt(sq);
  CF_RETURN_IF_ERROR(engine::CheckGradNorm(result->grad_norm));
  const float coef = engine::ClipCoefficient(result->grad_norm, options.clip);
  step_ = engine::NextOptimizerStep(step_, options);
  if (!device) {
    if (coef != 1.0f) kernels::cpu::scale(params_.grads().data(), numel, coef);
    engine::ApplyUpdate(params_, m_, v_, step_, options);
    return absl::OkStatus();
  }
  if (coef != 1.0f) CF_RETURN_IF_ERROR(cuda_stage_->ScaleGrads(coef));
  CF_RETURN_IF_ERROR(cuda_stage_->ApplyUpdate(step_, options));
  return ctx_->Sync("optimizer update");
}

namespace {

constexpr char kEmbedName[] = "model.embed_tokens.weight";

std::string ShardFile(int32_t stage, int32_t pp) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", stage + 1, pp);
}

absl::Status MakeDirs(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i < dir.size() && dir[i] != '/') continue;
    const std::string prefix = dir.substr(0, i);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::UnavailableError(
          absl::StrCat("cannot create ", prefix, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, const std::string& text) {
  std::ofstream out(path + ".tmp");
  out << text;
  out.close();
  if (!out || std::rename((path + ".tmp").c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status StepRunner::SaveShard(const std::string& dir, int32_t stage, int32_t pp) {
  CF_RETURN_IF_ERROR(SyncToHost());  // the host copy is what is written
  if (absl::Status s = MakeDirs(dir); !s.ok()) return s;
  std::vector<engine::TensorToWrite> weights, moments;
  for (const engine::ParamTensor& t : params_.tensors()) {
    const bool tied_copy = stage > 0 && t.name == kEmbedName;
    if (!tied_copy) {
      weights.push_back({t.name, engine::DType::kF32, t.shape, params_.values().data() + t.offset});
    }
    moments.push_back({"exp_avg." + t.name, engine::DType::kF32, t.shape, m_.data() + t.offset});
    moments.push_back({"exp_avg_sq." + t.name, engine::DType::kF32, t.shape, v_.data() + t.offset});
  }
  if (absl::Status s = engine::WriteSafetensors(dir + "/" + ShardFile(stage, pp), weights,
                                                {{"format", "pt"}});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = engine::WriteSafetensors(
          absl::StrFormat("%s/optimizer-stage-%d.safetensors", dir, stage), moments,
          {{"step", std::to_string(step_)}});
      !s.ok()) {
    return s;
  }
  if (stage != 0) return absl::OkStatus();
  // The index: which stage's file holds each tensor.
  const engine::ModelConfig& c = params_.config();
  absl::StatusOr<std::vector<engine::StageRange>> ranges =
      engine::PartitionStages(c.num_hidden_layers, pp);
  if (!ranges.ok()) return ranges.status();
  nlohmann::json map = nlohmann::json::object();
  for (int32_t s = 0; s < pp; ++s) {
    engine::StageParams p(c, (*ranges)[s]);
    for (const engine::ParamTensor& t : p.tensors()) {
      if (s > 0 && t.name == kEmbedName) continue;
      map[t.name] = ShardFile(s, pp);
    }
  }
  nlohmann::json index;
  index["metadata"] = nlohmann::json::object();
  index["weight_map"] = map;
  if (absl::Status s = WriteFileAtomically(dir + "/model.safetensors.index.json", index.dump(2));
      !s.ok()) {
    return s;
  }
  return WriteFileAtomically(dir + "/config.json", engine::ToHfConfigJson(c));
}

absl::Status StepRunner::LoadShard(const std::string& dir, int32_t stage) {
  absl::StatusOr<engine::SafetensorsReader> model = engine::SafetensorsReader::Open(dir);
  if (!model.ok()) return model.status();
  const std::string opt_path = absl::StrFormat("%s/optimizer-stage-%d.safetensors", dir, stage);
  absl::StatusOr<engine::SafetensorsReader> opt = engine::SafetensorsReader::Open(opt_path);
  if (!opt.ok()) return opt.status();
  int64_t step = 0;
  auto it = opt->metadata().find("step");
  if (it == opt->metadata().end() || !absl::SimpleAtoi(it->second, &step) || step < 0) {
    return absl::InvalidArgumentError(absl::StrCat(opt_path, ": metadata 'step' is missing or bad"));
  }
  std::vector<float> m(m_.size()), v(v_.size());
  for (const engine::ParamTensor& t : params_.tensors()) {
    if (absl::Status s = opt->ReadF32("exp_avg." + t.name, t.shape, m.data() + t.offset); !s.ok()) {
      return s;
    }
    if (absl::Status s = opt->ReadF32("exp_avg_sq." + t.name, t.shape, v.data() + t.offset);
        !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = params_.Load(*model); !s.ok()) return s;
  m_.swap(m);
  v_.swap(v);
  step_ = step;
  if (cuda_stage_) {
    CF_RETURN_IF_ERROR(cuda_stage_->SetMoments(m_, v_));
    return ParamsChanged();
  }
  return absl::OkStatus();
}

}  // namespace chunkflow::worker
