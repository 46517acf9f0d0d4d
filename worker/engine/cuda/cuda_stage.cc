#include "worker/engine/cuda/cuda_stage.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/linear.h"
#include "kernels/cuda/status.h"

namespace chunkflow::engine::cuda {

namespace kc = ::chunkflow::kernels::cuda;

// A kernel launch, checked and named by its call text.
#define CF_LAUNCH(expr) CF_RETURN_IF_ERROR(kc::CudaCheck((expr), #expr))

namespace {

constexpr char kEmbed[] = "model.embed_tokens.weight";
constexpr int64_t kF = static_cast<int64_t>(sizeof(float));

// Biases and norm weights are not decayed (as engine::ApplyUpdate).
bool Decayed(const ParamTensor& t) { return t.shape.size() == 2; }

// The offloaded state's windows of one layer of an op: an error before the
// op releases them (copying back what it wrote) discards them instead.
class StateWindows {
 public:
  StateWindows(DeviceStateStore* store, int64_t layer) : store_(store), layer_(layer) {}
  ~StateWindows() {
    for (int64_t seq : seqs_) store_->Discard(seq, layer_);
  }
  absl::Status Acquire(int64_t seq, int64_t kv_rows, bool grads) {
    seqs_.push_back(seq);
    return store_->Acquire(seq, layer_, kv_rows, grads);
  }
  // The caller releases them from here on.
  void Handover() { seqs_.clear(); }

 private:
  DeviceStateStore* store_;
  int64_t layer_;
  std::vector<int64_t> seqs_;
};

}  // namespace

CudaStage::CudaStage(StageParams* params, DeviceContext* ctx, MemoryTracker* mem,
                     const CudaStageOptions& options)
    : params_(params),
      ctx_(ctx),
      mem_(mem),
      options_(options),
      state_(ctx, params->range().end_layer - params->range().first_layer,
             params->config().kv_dim(), mem, options.offload_state),
      c_(params->config().hidden_size),
      qd_(params->config().num_attention_heads * params->config().head_dim()),
      kvd_(params->config().kv_dim()),
      inter_(params->config().intermediate_size),
      vocab_(params->config().vocab_size) {}

absl::StatusOr<std::unique_ptr<CudaStage>> CudaStage::Create(StageParams* params,
                                                             DeviceContext* ctx,
                                                             MemoryTracker* mem,
                                                             const CudaStageOptions& options) {
  if (options.head_rows < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_rows must be >= 1, got ", options.head_rows));
  }
  const int64_t head_dim = params->config().head_dim();
  const bool flash_ok = kc::flash_attention_supported(head_dim);
  if (options.attention == AttentionKernel::kFlash && !flash_ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flash attention does not support head_dim ", head_dim, " (16, 32, 64 or 128)"));
  }
  CF_RETURN_IF_ERROR(ctx->Activate());
  std::unique_ptr<CudaStage> s(new CudaStage(params, ctx, mem, options));
  s->flash_ = options.attention == AttentionKernel::kFlash ||
              (options.attention == AttentionKernel::kAuto &&
               options.precision == Precision::kBf16 && flash_ok);
  // bf16 storage needs the flash kernel: it rounds q to bf16 in the forward
  // too, so the backward's scores from the stored q match the forward's lse
  // (the reference kernel's fp32 forward would not).
  s->pack_ = options.precision == Precision::kBf16 && options.bf16_activations && s->flash_;
  const int64_t n = params->numel();
  // Parameters are not activations, state or scratch: only the allocator
  // (the device total) counts them.
  CF_RETURN_IF_ERROR(
      s->values_.Allocate(ctx, nullptr, MemoryTracker::kScratch, n, "stage weights (fp32)"));
  CF_RETURN_IF_ERROR(
      s->grads_.AllocateZeroed(ctx, nullptr, MemoryTracker::kScratch, n, "stage gradients"));
  if (options.precision == Precision::kBf16) {
    CF_RETURN_IF_ERROR(s->values_bf16_.Allocate(ctx, nullptr, MemoryTracker::kScratch, n,
                                                 "stage weights (bf16 copy)"));
  }
  std::vector<kc::TensorSpan> spans;
  for (const ParamTensor& t : params->tensors()) {
    spans.push_back({t.offset, t.numel, Decayed(t) ? 1 : 0});
  }
  CF_RETURN_IF_ERROR(s->spans_.Allocate(ctx, nullptr, MemoryTracker::kScratch,
                                        static_cast<int64_t>(spans.size()), "tensor spans"));
  CF_RETURN_IF_ERROR(s->spans_.Upload(spans.data(), static_cast<int64_t>(spans.size())));
  CF_RETURN_IF_ERROR(s->norm_scratch_.Allocate(ctx, nullptr, MemoryTracker::kScratch,
                                               kc::kSumOfSquaresBlocks + 1, "norm scratch"));
  CF_RETURN_IF_ERROR(s->UploadParams());
  CF_RETURN_IF_ERROR(ctx->Sync("CudaStage::Create"));
  return s;
}

template <typename T>
absl::Status CudaStage::Alloc(DArray<T>& a, MemoryTracker::Kind kind, int64_t n, const char* what,
                              bool zero) {
  return zero ? a.AllocateZeroed(ctx_, mem_, kind, n, what) : a.Allocate(ctx_, mem_, kind, n, what);
}

void CudaStage::Reset() {
  acts_.clear();
  state_.Clear();
  offloaded_.clear();
}

// ---------------------------------------------------------------------------
// Parameters and the optimizer
// ---------------------------------------------------------------------------

absl::Status CudaStage::RefreshBf16() {
  if (options_.precision != Precision::kBf16) return absl::OkStatus();
  CF_LAUNCH(kc::float_to_bf16(values_bf16_.data(), values_.data(), params_->numel(),
                              ctx_->stream()));
  return absl::OkStatus();
}

absl::Status CudaStage::UploadParams() {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  CF_RETURN_IF_ERROR(values_.Upload(params_->values().data(), params_->numel()));
  return RefreshBf16();
}

absl::Status CudaStage::DownloadParams() {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  return values_.Download(params_->values().data(), params_->numel());
}

absl::Status CudaStage::DownloadGrads() {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  return grads_.Download(params_->grads().data(), params_->numel());
}

absl::Status CudaStage::UploadGrads() {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  return grads_.Upload(params_->grads().data(), params_->numel());
}

absl::Status CudaStage::ZeroGrads() {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  return ZeroOnDevice(*ctx_, grads_.data(), params_->numel() * kF, "zero gradients");
}

absl::StatusOr<double> CudaStage::GradSquares() {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  const StageRange& r = params_->range();
  std::vector<std::pair<int64_t, int64_t>> ranges;  // [begin, end)
  const ParamTensor* tied = nullptr;
  if (!r.first && r.last && params_->config().tie_word_embeddings) tied = params_->Find(kEmbed);
  if (tied != nullptr) {
    ranges.push_back({0, tied->offset});
    ranges.push_back({tied->offset + tied->numel, params_->numel()});
  } else {
    ranges.push_back({0, params_->numel()});
  }
  double total = 0;
  double* result = norm_scratch_.data() + kc::kSumOfSquaresBlocks;
  for (auto [begin, end] : ranges) {
    if (end <= begin) continue;
    CF_LAUNCH(kc::sum_of_squares(result, grads_.data() + begin, end - begin, norm_scratch_.data(),
                                 ctx_->stream()));
    double part = 0;
    CF_RETURN_IF_ERROR(CopyToHost(*ctx_, &part, result, sizeof(double), "gradient norm"));
    total += part;
  }
  return total;
}

absl::Status CudaStage::ScaleGrads(float factor) {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  CF_LAUNCH(kc::scale(grads_.data(), params_->numel(), factor, ctx_->stream()));
  return absl::OkStatus();
}

absl::Status CudaStage::ApplyUpdate(int64_t step, const TrainOptions& o) {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  const int64_t n = params_->numel();
  if (o.optimizer == OptimizerKind::kSgd) {
    CF_LAUNCH(kc::sgd_update(values_.data(), grads_.data(), n, o.lr, ctx_->stream()));
    return RefreshBf16();
  }
  if (m_.empty()) {
    CF_RETURN_IF_ERROR(m_.AllocateZeroed(ctx_, nullptr, MemoryTracker::kScratch, n, "AdamW m"));
    CF_RETURN_IF_ERROR(v_.AllocateZeroed(ctx_, nullptr, MemoryTracker::kScratch, n, "AdamW v"));
  }
  kc::AdamWConfig cfg;
  cfg.lr = o.lr;
  cfg.beta1 = o.beta1;
  cfg.beta2 = o.beta2;
  cfg.eps = o.eps;
  cfg.weight_decay = o.weight_decay;
  CF_LAUNCH(kc::adamw_update_multi(values_.data(), grads_.data(), m_.data(), v_.data(),
                                   spans_.data(), spans_.size(), step, cfg, ctx_->stream()));
  return RefreshBf16();
}

absl::Status CudaStage::SetMoments(const std::vector<float>& m, const std::vector<float>& v) {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  const int64_t n = params_->numel();
  if (static_cast<int64_t>(m.size()) != n || static_cast<int64_t>(v.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("moments of ", m.size(), " and ", v.size(),
                                                   " values for a stage of ", n, " parameters"));
  }
  if (m_.empty()) {
    CF_RETURN_IF_ERROR(m_.Allocate(ctx_, nullptr, MemoryTracker::kScratch, n, "AdamW m"));
    CF_RETURN_IF_ERROR(v_.Allocate(ctx_, nullptr, MemoryTracker::kScratch, n, "AdamW v"));
  }
  CF_RETURN_IF_ERROR(m_.Upload(m.data(), n));
  return v_.Upload(v.data(), n);
}

absl::Status CudaStage::GetMoments(std::vector<float>* m, std::vector<float>* v) {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  const int64_t n = params_->numel();
  m->assign(static_cast<size_t>(n), 0.0f);
  v->assign(static_cast<size_t>(n), 0.0f);
  if (m_.empty()) return absl::OkStatus();  // no AdamW step yet
  CF_RETURN_IF_ERROR(m_.Download(m->data(), n));
  return v_.Download(v->data(), n);
}

const float* CudaStage::W(const float* host) const {
  if (host == nullptr) return nullptr;
  return values_.data() + (host - params_->values().data());
}

const __nv_bfloat16* CudaStage::WB(const float* host) const {
  return values_bf16_.data() + (host - params_->values().data());
}

float* CudaStage::G(const float* host) {
  if (host == nullptr) return nullptr;
  return grads_.data() + (host - params_->values().data());
}

// ---------------------------------------------------------------------------
// GEMMs in the stage's precision
// ---------------------------------------------------------------------------

absl::Status CudaStage::Linear(float* out, Operand inp, const float* w, const float* b,
                               int64_t T, int64_t IC, int64_t OC) {
  if (!bf16()) {
    if (inp.f32 == nullptr) return absl::InternalError("an fp32 GEMM given a bf16 input");
    return kc::linear_forward(out, inp.f32, W(w), W(b), T, IC, OC, ctx_->blas());
  }
  DArray<Bf16> x16;
  absl::StatusOr<const Bf16*> x = InBf16(inp, T * IC, &x16, "bf16 GEMM input");
  if (!x.ok()) return x.status();
  return kc::linear_forward_bf16(out, *x, WB(w), W(b), T, IC, OC, ctx_->blas());
}

absl::StatusOr<const CudaStage::Bf16*> CudaStage::InBf16(Operand x, int64_t n,
                                                         DArray<Bf16>* scratch, const char* what) {
  if (x.b16 != nullptr) return x.b16;
  CF_RETURN_IF_ERROR(Alloc(*scratch, MemoryTracker::kScratch, n, what));
  CF_LAUNCH(kc::float_to_bf16(scratch->data(), x.f32, n, ctx_->stream()));
  return scratch->data();
}

// w / b: the layer's host weight pointers (their gradients are accumulated).
absl::Status CudaStage::LinearBackward(float* dinp, const float* w, const float* b, Operand dout,
                                       Operand inp, int64_t T, int64_t IC, int64_t OC) {
  if (b != nullptr && dout.f32 == nullptr) {
    return absl::InternalError("a bias gradient needs the fp32 output gradient");
  }
  if (!bf16()) {
    if (dout.f32 == nullptr || inp.f32 == nullptr) {
      return absl::InternalError("an fp32 GEMM backward given a bf16 operand");
    }
    return kc::linear_backward(dinp, G(w), G(b), dout.f32, inp.f32, W(w), T, IC, OC,
                               ctx_->blas());
  }
  DArray<Bf16> d16, x16;
  absl::StatusOr<const Bf16*> d = InBf16(dout, T * OC, &d16, "bf16 GEMM output gradient");
  if (!d.ok()) return d.status();
  absl::StatusOr<const Bf16*> x = InBf16(inp, T * IC, &x16, "bf16 GEMM input");
  if (!x.ok()) return x.status();
  CF_RETURN_IF_ERROR(
      kc::linear_backward_bf16(dinp, G(w), nullptr, *d, *x, WB(w), T, IC, OC, ctx_->blas()));
  // The bias gradient from the fp32 output gradient (column_sums: a fixed
  // order, deterministic, in double).
  if (b != nullptr) CF_LAUNCH(kc::column_sums(G(b), dout.f32, T, OC, ctx_->stream()));
  return absl::OkStatus();
}

absl::Status CudaStage::NormForGemm(const float* x, const float* weight, float* rstd, int64_t t,
                                    Normed* out) {
  const float eps = static_cast<float>(params_->config().rms_norm_eps);
  cudaStream_t st = ctx_->stream();
  constexpr MemoryTracker::Kind kS = MemoryTracker::kScratch;
  if (bf16()) {
    CF_RETURN_IF_ERROR(Alloc(out->b16, kS, t * c_, "normed hidden (bf16)"));
    if (options_.fused_elementwise) {
      CF_LAUNCH(kc::rmsnorm_forward_bf16(out->b16.data(), rstd, x, W(weight), t, c_, eps, st));
      return absl::OkStatus();
    }
  }
  CF_RETURN_IF_ERROR(Alloc(out->f32, kS, t * c_, "normed hidden"));
  CF_LAUNCH(kc::rmsnorm_forward(out->f32.data(), rstd, x, W(weight), t, c_, eps, st));
  if (bf16()) {
    CF_LAUNCH(kc::float_to_bf16(out->b16.data(), out->f32.data(), t * c_, st));
    out->f32.Release();  // stream-ordered: the conversion has read it first
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

absl::Status CudaStage::UploadRows(const ChunkInput& in, ChunkRows* rows) {
  const int64_t t = in.rows;
  CF_RETURN_IF_ERROR(Alloc(rows->tokens, MemoryTracker::kScratch, t, "chunk token ids"));
  CF_RETURN_IF_ERROR(Alloc(rows->targets, MemoryTracker::kScratch, t, "chunk targets"));
  CF_RETURN_IF_ERROR(Alloc(rows->positions, MemoryTracker::kScratch, t, "chunk positions"));
  CF_RETURN_IF_ERROR(rows->tokens.Upload(in.tokens.data(), t));
  CF_RETURN_IF_ERROR(rows->targets.Upload(in.targets.data(), t));
  return rows->positions.Upload(in.positions.data(), t);
}

absl::Status CudaStage::Forward(const ChunkInput& in, const float* x, float* y, ForwardKind kind) {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  const StageRange& r = params_->range();
  const int64_t n = in.rows * c_;
  DArray<float> dx, dy;
  const bool reads = !r.first && kind != ForwardKind::kRecompute;
  if (reads) {
    CF_RETURN_IF_ERROR(Alloc(dx, MemoryTracker::kScratch, n, "received activation"));
    CF_RETURN_IF_ERROR(dx.Upload(x, n));
  }
  if (!r.last) CF_RETURN_IF_ERROR(Alloc(dy, MemoryTracker::kScratch, n, "stage output"));
  CF_RETURN_IF_ERROR(ForwardDevice(in, reads ? dx.data() : nullptr, r.last ? nullptr : dy.data(),
                                   kind));
  if (!r.last) return dy.Download(y, n);
  return ctx_->Sync("forward");
}

absl::Status CudaStage::ForwardDevice(const ChunkInput& in, const float* x, float* y,
                                      ForwardKind kind) {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  const StageRange& r = params_->range();
  const int64_t t = in.rows;
  auto it = acts_.find(in.id);
  const bool held = it != acts_.end();
  CF_RETURN_IF_ERROR(CheckReferenceAttention(in));
  CF_RETURN_IF_ERROR(CheckForwardOrder(in, kind, held, held && it->second.has_activations,
                                 [this](int64_t seq) { return state_.rows(seq); }));
  if (kind != ForwardKind::kRecompute) {
    // kAuto: keep free what the working set grew to beyond what it holds
    // now, and at least the estimate for the chunks this step holds at once.
    const int64_t headroom = std::max(mem_->working_high_water() - mem_->working(),
                                      chunks_held_ * EstimateChunkWorkingBytes(t, kind));
    for (const PieceRows& p : in.pieces) {
      CF_RETURN_IF_ERROR(state_.Grow(p.seq, p.offset + p.length, p.seq_length,
                                     kind != ForwardKind::kInference, headroom));
      if (state_.offloaded(p.seq)) offloaded_.insert(p.seq);
    }
  }
  const bool keep = kind == ForwardKind::kKeep || kind == ForwardKind::kRecompute;
  ChunkActs local;
  ChunkActs& ca = kind == ForwardKind::kInference ? local : acts_[in.id];
  ChunkRows rows;
  CF_RETURN_IF_ERROR(UploadRows(in, &rows));
  const StageView w = params_->weights();

  DArray<float> cur;
  CF_RETURN_IF_ERROR(Alloc(cur, MemoryTracker::kScratch, t * c_, "hidden state"));
  if (r.first) {
    CF_LAUNCH(kc::embedding_forward(cur.data(), rows.tokens.data(), W(w.embed), t, c_,
                                    ctx_->stream()));
  } else if (kind == ForwardKind::kRecompute) {
    CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, cur.data(), ca.input.data(), t * c_ * kF, "recompute"));
    ca.input.Release();
  } else {
    CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, cur.data(), x, t * c_ * kF, "stage input"));
    if (kind == ForwardKind::kDrop) {
      CF_RETURN_IF_ERROR(Alloc(ca.input, MemoryTracker::kActivations, t * c_, "kept stage input"));
      CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, ca.input.data(), x, t * c_ * kF, "kept input"));
    }
  }
  const int64_t layers = r.end_layer - r.first_layer;
  LayerActs scratch;
  if (keep) ca.layers.resize(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    CF_RETURN_IF_ERROR(LayerForward(l, in, rows, kind != ForwardKind::kRecompute,
                                    keep ? MemoryTracker::kActivations : MemoryTracker::kScratch,
                                    keep ? ca.layers[l] : scratch, cur.data()));
  }
  if (r.last) {
    if (kind != ForwardKind::kRecompute) CF_RETURN_IF_ERROR(HeadLoss(in, rows, cur.data()));
    if (keep) {
      CF_RETURN_IF_ERROR(Alloc(ca.xfinal, MemoryTracker::kActivations, t * c_, "final hidden"));
      CF_RETURN_IF_ERROR(
          CopyOnDevice(*ctx_, ca.xfinal.data(), cur.data(), t * c_ * kF, "final hidden"));
    }
  } else {
    CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, y, cur.data(), t * c_ * kF, "stage output"));
  }
  ca.has_activations = keep;
  return absl::OkStatus();
}

int64_t CudaStage::PrepareStep(const StateTimeline& timeline) {
  if (options_.offload_state == StateOffload::kNever) return 0;
  const bool always = options_.offload_state == StateOffload::kAlways;
  // Grow, at a sequence's first chunk (`rows` rows, `held` chunks holding
  // activations), places it on the device when its whole state fits
  //   AvailableBytes() - max(high water - working, chunks_held_ * estimate)
  //   - the largest window of the live offloaded sequences,
  // where AvailableBytes() has lost the live on-device state and the working
  // set (about `held` estimates). So its room is what the live state leaves,
  // less max(high water, (held + chunks_held_) * estimate) and that window.
  // What the estimate does not see (the step runner's link buffers, the
  // allocator's rounding) is within `margin`: a sequence that close to the
  // edge is taken both ways - pinned, and counted on the device for the
  // sequences after it - so a wrong guess costs pinned memory, not a pin
  // mid-step.
  const int64_t high_water = mem_->working_high_water() - mem_->working();
  const int64_t margin = EstimateChunkWorkingBytes(timeline.chunk_rows, ForwardKind::kKeep);
  int64_t free_bytes = ctx_->AvailableBytes();
  struct Placed {
    bool pinned = false, on_device = false;
  };
  std::map<int64_t, Placed> live;
  std::multiset<int64_t> windows;  // of the live sequences that may be offloaded
  std::vector<int64_t> capacities;
  for (const StateEvent& e : timeline.events) {
    const int64_t bytes = state_.StateBytes(e.tokens, /*grads=*/true);
    const int64_t window = state_.WindowBytes(e.tokens, /*grads=*/true);
    if (e.freed) {
      auto it = live.find(e.seq);
      if (it == live.end()) continue;
      if (it->second.pinned) windows.erase(windows.find(window));
      if (it->second.on_device) free_bytes += bytes;
      live.erase(it);
      continue;
    }
    const int64_t headroom = std::max(
        high_water,
        (e.held + chunks_held_) * EstimateChunkWorkingBytes(std::max<int64_t>(e.rows, 1),
                                                            ForwardKind::kKeep));
    const int64_t room = free_bytes - headroom - (windows.empty() ? 0 : *windows.rbegin());
    Placed p;
    p.pinned = always || bytes > room - margin;
    p.on_device = !always && bytes <= room + margin;
    if (p.pinned) {
      capacities.push_back(e.tokens);
      windows.insert(window);
    }
    if (p.on_device) free_bytes -= bytes;
    live[e.seq] = p;
  }
  // Every predicted sequence pinned, though one freed early returns its
  // buffers for a later one: at most the step's offloaded state, kept in
  // the cache for the steps after.
  return capacities.empty() ? 0 : state_.ReservePinned(capacities, /*grads=*/true);
}

absl::Status CudaStage::CheckReferenceAttention(const ChunkInput& in) const {
  if (flash_) return absl::OkStatus();
  for (const PieceRows& p : in.pieces) {
    // The whole sequence: refused at its first chunk, not after hours.
    const int64_t keys = std::max(p.offset + p.length, p.seq_length);
    if (keys > kReferenceAttentionMaxKeys) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sequence ", p.seq, " has ", keys,
          " tokens; the exact fp32 reference attention kernel (Precision::kFp32 or "
          "AttentionKernel::kReference) is for checks and would take hours beyond ",
          kReferenceAttentionMaxKeys, ": use bf16 precision (the flash kernel)"));
    }
  }
  return absl::OkStatus();
}

int64_t CudaStage::EstimateChunkWorkingBytes(int64_t rows, ForwardKind kind) const {
  const ModelConfig& cfg = params_->config();
  const StageRange& r = params_->range();
  const int64_t layers = r.end_layer - r.first_layer;
  // Per row: the activations kept per layer (bf16 when packed; rstd x2 and
  // lse stay fp32), one layer's fp32 working arrays, and the chunk's
  // hidden state, kept input and final hidden. The flash backward's
  // workspace adds delta (a float a head), bf16 Q and dO (qd_ floats
  // together) and at most 2 * qd_ of split dk/dv partials; its bf16 K / V
  // grow with the prefix instead (4 bytes a key and kv dim), which this
  // per-row figure leaves to the allocator's high-water mark.
  const int64_t wide = 2 * c_ + 2 * qd_ + 2 * inter_;
  const int64_t kept = (pack_ ? 2 : kF) * wide + kF * (2 + cfg.num_attention_heads);
  const int64_t flash_workspace = flash_ ? 3 * qd_ + cfg.num_attention_heads : 0;
  const int64_t layer_scratch = kF * (wide + 3 * c_ + 2 * kvd_ + inter_ + flash_workspace);
  const int64_t kept_layers = kind == ForwardKind::kInference ? 1 : layers;
  int64_t bytes = rows * (kept_layers * kept + layer_scratch + 3 * c_ * kF);
  if (r.last) bytes += std::min(rows, options_.head_rows) * vocab_ * kF;
  return bytes;
}

std::vector<kc::AttentionSegment> CudaStage::Segments(const ChunkInput& in, int64_t l) {
  return AttentionSegments<kc::AttentionSegment>(in, l, state_);
}

absl::Status CudaStage::LayerForward(int64_t l, const ChunkInput& in, const ChunkRows& rows,
                                     bool write_kv, MemoryTracker::Kind kind, LayerActs& a,
                                     float* inout) {
  const ModelConfig& cfg = params_->config();
  const LayerView w = params_->weights().layers[l];
  const int64_t t = in.rows, h = cfg.num_attention_heads, hk = cfg.num_key_value_heads;
  const int64_t d = cfg.head_dim();
  const float theta = static_cast<float>(cfg.rope_theta);
  const bool fused = bf16() && options_.fused_elementwise;
  cudaStream_t st = ctx_->stream();
  constexpr MemoryTracker::Kind kS = MemoryTracker::kScratch;

  // Kept in bf16: each activation goes into `packed` as it is made (the
  // bf16 attention output and gate / up are also what the GEMMs read), and
  // the fp32 working copies are scratch, each released after its last use
  // (stream-ordered: the kernels queued before have read it).
  const bool pack = kind == MemoryTracker::kActivations && pack_;
  const MemoryTracker::Kind wide = pack ? kS : kind;
  const PackedOffsets off = Offsets(t);
  if (pack) CF_RETURN_IF_ERROR(Alloc(a.packed, kind, off.total, "bf16 activations"));
  auto packed = [&](int64_t at) { return pack ? a.packed.data() + at : nullptr; };
  auto keep16 = [&](const DArray<float>& src, int64_t at) -> absl::Status {
    if (pack) CF_LAUNCH(kc::float_to_bf16(packed(at), src.data(), src.size(), st));
    return absl::OkStatus();
  };

  // Offloaded state: this layer's K/V of the chunk's sequences come in (the
  // rows this forward writes need not).
  StateWindows windows(&state_, l);
  for (const PieceRows& p : in.pieces) {
    CF_RETURN_IF_ERROR(
        windows.Acquire(p.seq, write_kv ? p.offset : p.offset + p.length, /*grads=*/false));
  }
  CF_RETURN_IF_ERROR(Alloc(a.x, wide, t * c_, "layer input"));
  CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, a.x.data(), inout, t * c_ * kF, "layer input"));
  CF_RETURN_IF_ERROR(keep16(a.x, off.x));
  CF_RETURN_IF_ERROR(Alloc(a.rstd1, kind, t, "rstd1"));
  Normed hn;
  CF_RETURN_IF_ERROR(NormForGemm(a.x.data(), w.ln1, a.rstd1.data(), t, &hn));
  CF_RETURN_IF_ERROR(Alloc(a.q, wide, t * qd_, "q"));
  CF_RETURN_IF_ERROR(Linear(a.q.data(), hn.operand(), w.wq, w.bq, t, c_, qd_));
  CF_LAUNCH(kc::rope_forward(a.q.data(), a.q.data(), rows.positions.data(), t, h, d, theta, st));
  CF_RETURN_IF_ERROR(keep16(a.q, off.q));
  if (write_kv) {
    // A recompute reads the K/V its first forward left in the state store.
    DArray<float> kb, vb;
    CF_RETURN_IF_ERROR(Alloc(kb, kS, t * kvd_, "k"));
    CF_RETURN_IF_ERROR(Alloc(vb, kS, t * kvd_, "v"));
    CF_RETURN_IF_ERROR(Linear(kb.data(), hn.operand(), w.wk, w.bk, t, c_, kvd_));
    CF_RETURN_IF_ERROR(Linear(vb.data(), hn.operand(), w.wv, w.bv, t, c_, kvd_));
    CF_LAUNCH(kc::rope_forward(kb.data(), kb.data(), rows.positions.data(), t, hk, d, theta, st));
    for (const PieceRows& p : in.pieces) {
      CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, state_.k(p.seq, l) + p.offset * kvd_,
                                      kb.data() + p.row * kvd_, p.length * kvd_ * kF, "state K"));
      CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, state_.v(p.seq, l) + p.offset * kvd_,
                                      vb.data() + p.row * kvd_, p.length * kvd_ * kF, "state V"));
    }
  }
  hn = Normed();
  CF_RETURN_IF_ERROR(Alloc(a.att, wide, t * qd_, "attention output"));
  CF_RETURN_IF_ERROR(Alloc(a.lse, kind, t * h, "attention lse"));
  const std::vector<kc::AttentionSegment> segs = Segments(in, l);
  if (flash_) {
    const absl::StatusOr<int64_t> ws_floats = kc::flash_attention_forward_workspace(
        segs.data(), static_cast<int64_t>(segs.size()), h, hk, d);
    if (!ws_floats.ok()) return ws_floats.status();
    DArray<float> workspace;  // K and V in bf16
    CF_RETURN_IF_ERROR(Alloc(workspace, kS, *ws_floats, "attention forward workspace"));
    CF_RETURN_IF_ERROR(kc::flash_attention_forward(
        a.att.data(), a.lse.data(), a.q.data(), segs.data(), static_cast<int64_t>(segs.size()), h,
        hk, d, workspace.data(), *ws_floats, st));
  } else {
    CF_RETURN_IF_ERROR(kc::attention_forward(a.att.data(), a.lse.data(), a.q.data(), segs.data(),
                                             static_cast<int64_t>(segs.size()), h, hk, d, st));
  }
  windows.Handover();
  for (const PieceRows& p : in.pieces) {  // the rows this forward wrote go back
    CF_RETURN_IF_ERROR(state_.Release(
        p.seq, l, write_kv ? std::pair{p.offset, p.offset + p.length} : std::pair<int64_t, int64_t>{0, 0},
        /*grads_end=*/0));
  }
  if (pack) a.q.Release();
  CF_RETURN_IF_ERROR(keep16(a.att, off.att));
  if (pack) a.att.Release();
  DArray<float> tmp;
  CF_RETURN_IF_ERROR(Alloc(tmp, kS, t * c_, "branch output"));
  CF_RETURN_IF_ERROR(Linear(tmp.data(), pack ? Operand(packed(off.att)) : Operand(a.att.data()),
                            w.wo, nullptr, t, qd_, c_));
  CF_RETURN_IF_ERROR(Alloc(a.xmid, wide, t * c_, "x'"));
  CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, a.xmid.data(), a.x.data(), t * c_ * kF, "x'"));
  CF_LAUNCH(kc::add_to(a.xmid.data(), tmp.data(), t * c_, st));
  if (pack) a.x.Release();
  CF_RETURN_IF_ERROR(keep16(a.xmid, off.xmid));

  CF_RETURN_IF_ERROR(Alloc(a.rstd2, kind, t, "rstd2"));
  CF_RETURN_IF_ERROR(NormForGemm(a.xmid.data(), w.ln2, a.rstd2.data(), t, &hn));
  CF_RETURN_IF_ERROR(Alloc(a.gate, wide, t * inter_, "gate"));
  CF_RETURN_IF_ERROR(Alloc(a.up, wide, t * inter_, "up"));
  CF_RETURN_IF_ERROR(Linear(a.gate.data(), hn.operand(), w.wg, nullptr, t, c_, inter_));
  CF_RETURN_IF_ERROR(Linear(a.up.data(), hn.operand(), w.wu, nullptr, t, c_, inter_));
  hn = Normed();
  DArray<float> act;
  DArray<Bf16> act16;
  if (fused) {
    CF_RETURN_IF_ERROR(Alloc(act16, kS, t * inter_, "swiglu (bf16)"));
    CF_LAUNCH(kc::swiglu_forward_bf16(act16.data(), packed(off.gate), packed(off.up),
                                      a.gate.data(), a.up.data(), t * inter_, st));
  } else {
    CF_RETURN_IF_ERROR(Alloc(act, kS, t * inter_, "swiglu"));
    CF_LAUNCH(kc::swiglu_forward(act.data(), a.gate.data(), a.up.data(), t * inter_, st));
    CF_RETURN_IF_ERROR(keep16(a.gate, off.gate));
    CF_RETURN_IF_ERROR(keep16(a.up, off.up));
  }
  if (pack) {
    a.gate.Release();
    a.up.Release();
  }
  CF_RETURN_IF_ERROR(Linear(tmp.data(), fused ? Operand(act16.data()) : Operand(act.data()), w.wd,
                            nullptr, t, inter_, c_));
  CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, inout, a.xmid.data(), t * c_ * kF, "layer output"));
  CF_LAUNCH(kc::add_to(inout, tmp.data(), t * c_, st));
  if (pack) a.xmid.Release();
  return absl::OkStatus();
}

absl::Status CudaStage::HeadLoss(const ChunkInput& in, const ChunkRows& rows,
                                 const float* xfinal) {
  const StageView w = params_->weights();
  const int64_t t = in.rows;
  cudaStream_t st = ctx_->stream();
  constexpr MemoryTracker::Kind kS = MemoryTracker::kScratch;
  Normed hf;
  DArray<float> rstd, logits, losses;
  CF_RETURN_IF_ERROR(Alloc(rstd, kS, t, "final rstd"));
  CF_RETURN_IF_ERROR(NormForGemm(xfinal, w.final_norm, rstd.data(), t, &hf));
  const int64_t block = std::min(t, options_.head_rows);
  CF_RETURN_IF_ERROR(Alloc(logits, kS, block * vocab_, "logits tile"));
  CF_RETURN_IF_ERROR(Alloc(losses, kS, t, "row losses"));
  for (int64_t r0 = 0; r0 < t; r0 += block) {
    const int64_t n = std::min(block, t - r0);
    CF_RETURN_IF_ERROR(
        Linear(logits.data(), hf.operand().At(r0 * c_), w.head, nullptr, n, c_, vocab_));
    CF_LAUNCH(kc::cross_entropy_forward(losses.data() + r0, logits.data(),
                                        rows.targets.data() + r0, n, vocab_, st));
    if (logits_sink_ != nullptr) {
      const size_t at = logits_sink_->size();
      logits_sink_->resize(at + static_cast<size_t>(n * vocab_));
      CF_RETURN_IF_ERROR(logits.Download(logits_sink_->data() + at, n * vocab_));
    }
  }
  std::vector<float> host(static_cast<size_t>(t));
  CF_RETURN_IF_ERROR(losses.Download(host.data(), t));
  for (const PieceRows& p : in.pieces) {
    SequenceLoss& sl = losses_[p.seq];
    for (int64_t i = p.row; i < p.row + p.length; ++i) {
      if (in.targets[i] == kIgnoreIndex) continue;
      sl.sum += host[i];
      ++sl.count;
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

absl::Status CudaStage::Backward(const ChunkInput& in, const float* dy, float* dx) {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  const StageRange& r = params_->range();
  const int64_t n = in.rows * c_;
  DArray<float> ddy, ddx;
  if (!r.last) {
    CF_RETURN_IF_ERROR(Alloc(ddy, MemoryTracker::kScratch, n, "received gradient"));
    CF_RETURN_IF_ERROR(ddy.Upload(dy, n));
  }
  if (!r.first) CF_RETURN_IF_ERROR(Alloc(ddx, MemoryTracker::kScratch, n, "input gradient"));
  CF_RETURN_IF_ERROR(
      BackwardDevice(in, r.last ? nullptr : ddy.data(), r.first ? nullptr : ddx.data()));
  if (!r.first) return ddx.Download(dx, n);
  return ctx_->Sync("backward");
}

absl::Status CudaStage::BackwardDevice(const ChunkInput& in, const float* dy, float* dx) {
  CF_RETURN_IF_ERROR(ctx_->Activate());
  const StageRange& r = params_->range();
  const int64_t t = in.rows;
  auto it = acts_.find(in.id);
  const bool held = it != acts_.end();
  CF_RETURN_IF_ERROR(CheckReferenceAttention(in));
  CF_RETURN_IF_ERROR(CheckBackwardOrder(in, held, held && it->second.has_activations,
                                 [this](int64_t seq) { return state_.rows(seq); }));
  ChunkActs& ca = it->second;
  ChunkRows rows;
  CF_RETURN_IF_ERROR(UploadRows(in, &rows));
  DArray<float> dcur;
  CF_RETURN_IF_ERROR(Alloc(dcur, MemoryTracker::kScratch, t * c_, "hidden gradient", true));
  if (r.last) {
    CF_RETURN_IF_ERROR(HeadBackward(in, rows, ca.xfinal.data(), dcur.data()));
    ca.xfinal.Release();
  } else {
    CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, dcur.data(), dy, t * c_ * kF, "output gradient"));
  }
  for (int64_t l = r.end_layer - r.first_layer - 1; l >= 0; --l) {
    CF_RETURN_IF_ERROR(LayerBackward(l, in, rows, ca.layers[l], dcur.data()));
    ca.layers[l] = LayerActs();
    if (layer_hook_) CF_RETURN_IF_ERROR(layer_hook_(l));
  }
  if (r.first) {
    // Rows grouped by token on the host: parallel over tokens and columns,
    // the CPU's additions in its order.
    const kc::TokenGroups groups = kc::GroupRowsByToken(in.tokens.data(), t);
    const int64_t n_groups = static_cast<int64_t>(groups.token.size());
    DArray<int32_t> g_rows, g_begin, g_token;
    CF_RETURN_IF_ERROR(Alloc(g_rows, MemoryTracker::kScratch, t, "token groups"));
    CF_RETURN_IF_ERROR(Alloc(g_begin, MemoryTracker::kScratch, n_groups + 1, "token groups"));
    CF_RETURN_IF_ERROR(Alloc(g_token, MemoryTracker::kScratch, n_groups, "token groups"));
    CF_RETURN_IF_ERROR(g_rows.Upload(groups.rows.data(), t));
    CF_RETURN_IF_ERROR(g_begin.Upload(groups.begin.data(), n_groups + 1));
    CF_RETURN_IF_ERROR(g_token.Upload(groups.token.data(), n_groups));
    CF_LAUNCH(kc::embedding_backward_grouped(G(params_->weights().embed), dcur.data(),
                                             g_rows.data(), g_begin.data(), g_token.data(),
                                             n_groups, c_, ctx_->stream()));
  } else {
    CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, dx, dcur.data(), t * c_ * kF, "input gradient"));
  }
  for (const PieceRows& p : in.pieces) state_.Truncate(p.seq, p.offset);
  acts_.erase(it);
  return absl::OkStatus();
}

absl::Status CudaStage::HeadBackward(const ChunkInput& in, const ChunkRows& rows,
                                     const float* xfinal, float* dx) {
  const StageView w = params_->weights();
  const int64_t t = in.rows;
  cudaStream_t st = ctx_->stream();
  constexpr MemoryTracker::Kind kS = MemoryTracker::kScratch;
  Normed hf;
  DArray<float> rstd, dhf, logits;
  CF_RETURN_IF_ERROR(Alloc(rstd, kS, t, "final rstd"));
  CF_RETURN_IF_ERROR(NormForGemm(xfinal, w.final_norm, rstd.data(), t, &hf));
  CF_RETURN_IF_ERROR(Alloc(dhf, kS, t * c_, "final norm gradient", true));
  const int64_t block = std::min(t, options_.head_rows);
  CF_RETURN_IF_ERROR(Alloc(logits, kS, block * vocab_, "logits tile"));
  DArray<Bf16> dlogits16;
  if (bf16() && options_.fused_elementwise) {
    CF_RETURN_IF_ERROR(Alloc(dlogits16, kS, block * vocab_, "logits gradient tile (bf16)"));
  }
  for (int64_t r0 = 0; r0 < t; r0 += block) {
    const int64_t n = std::min(block, t - r0);
    const Operand rows_hf = hf.operand().At(r0 * c_);
    CF_RETURN_IF_ERROR(Linear(logits.data(), rows_hf, w.head, nullptr, n, c_, vocab_));
    if (dlogits16.empty()) {
      // In place: the tile becomes d(loss)/d(logits).
      CF_LAUNCH(kc::cross_entropy_fused(nullptr, logits.data(), rows.targets.data() + r0,
                                        loss_scale_, n, vocab_, st));
      CF_RETURN_IF_ERROR(LinearBackward(dhf.data() + r0 * c_, w.head, nullptr, logits.data(),
                                        rows_hf, n, c_, vocab_));
    } else {
      // d(loss)/d(logits) straight into the bf16 operand of the GEMMs.
      CF_LAUNCH(kc::cross_entropy_fused_bf16(nullptr, dlogits16.data(), logits.data(),
                                             rows.targets.data() + r0, loss_scale_, n, vocab_,
                                             st));
      CF_RETURN_IF_ERROR(LinearBackward(dhf.data() + r0 * c_, w.head, nullptr,
                                        Operand(dlogits16.data()), rows_hf, n, c_, vocab_));
    }
  }
  CF_LAUNCH(kc::rmsnorm_backward(dx, G(w.final_norm), dhf.data(), xfinal, W(w.final_norm),
                                 rstd.data(), t, c_, st));
  return absl::OkStatus();
}

CudaStage::PackedOffsets CudaStage::Offsets(int64_t t) const {
  PackedOffsets o;
  o.x = 0;
  o.q = o.x + t * c_;
  o.att = o.q + t * qd_;
  o.xmid = o.att + t * qd_;
  o.gate = o.xmid + t * c_;
  o.up = o.gate + t * inter_;
  o.total = o.up + t * inter_;
  return o;
}

absl::Status CudaStage::LayerBackward(int64_t l, const ChunkInput& in, const ChunkRows& rows,
                                      const LayerActs& kept, float* dx) {
  const bool fused = bf16() && options_.fused_elementwise;
  const bool packed = !kept.packed.empty();
  const PackedOffsets off = Offsets(in.rows);
  const float* lse = kept.lse.data();
  const ModelConfig& cfg = params_->config();
  const LayerView w = params_->weights().layers[l];
  const int64_t t = in.rows, h = cfg.num_attention_heads, hk = cfg.num_key_value_heads;
  const int64_t d = cfg.head_dim();
  const float theta = static_cast<float>(cfg.rope_theta);
  cudaStream_t st = ctx_->stream();
  constexpr MemoryTracker::Kind kS = MemoryTracker::kScratch;
  // bf16-stored activations: fp32 scratch copies, each widened when the
  // backward reaches its first use and released after its last (lse is
  // kept in fp32; rstd is recomputed below from the stored x / x'). The
  // fused SwiGLU reads the stored bf16 gate / up as they are, and the
  // attention output's GEMM its stored bf16 copy.
  LayerActs wide;
  const LayerActs& a = packed ? wide : kept;
  auto widen = [&](DArray<float> LayerActs::*part, int64_t at, int64_t n) -> absl::Status {
    if (!packed) return absl::OkStatus();
    DArray<float>& dst = wide.*part;
    CF_RETURN_IF_ERROR(Alloc(dst, kS, n, "widened activations"));
    CF_LAUNCH(kc::bf16_to_float(dst.data(), kept.packed.data() + at, n, st));
    return absl::OkStatus();
  };
  CF_RETURN_IF_ERROR(widen(&LayerActs::xmid, off.xmid, t * c_));
  if (!fused) {
    CF_RETURN_IF_ERROR(widen(&LayerActs::gate, off.gate, t * inter_));
    CF_RETURN_IF_ERROR(widen(&LayerActs::up, off.up, t * inter_));
  }

  // MLP: dx is the gradient of the layer output.
  Normed hn;
  DArray<float> rstd;
  CF_RETURN_IF_ERROR(Alloc(rstd, kS, t, "rstd"));
  CF_RETURN_IF_ERROR(NormForGemm(a.xmid.data(), w.ln2, rstd.data(), t, &hn));
  {
    const int64_t n = t * inter_;
    // The gate / up the fused kernels read: the stored bf16 ones, or the
    // fp32 ones kept without bf16 storage.
    const Bf16* gate16 = packed ? kept.packed.data() + off.gate : nullptr;
    const Bf16* up16 = packed ? kept.packed.data() + off.up : nullptr;
    DArray<float> act, dact;
    DArray<Bf16> act16;
    if (fused) {
      CF_RETURN_IF_ERROR(Alloc(act16, kS, n, "swiglu (bf16)"));
      CF_LAUNCH(packed ? kc::swiglu_forward_bf16(act16.data(), gate16, up16, n, st)
                       : kc::swiglu_forward_bf16(act16.data(), nullptr, nullptr, a.gate.data(),
                                                 a.up.data(), n, st));
    } else {
      CF_RETURN_IF_ERROR(Alloc(act, kS, n, "swiglu"));
      CF_LAUNCH(kc::swiglu_forward(act.data(), a.gate.data(), a.up.data(), n, st));
    }
    CF_RETURN_IF_ERROR(Alloc(dact, kS, n, "swiglu gradient", true));
    CF_RETURN_IF_ERROR(LinearBackward(dact.data(), w.wd, nullptr, dx,
                                      fused ? Operand(act16.data()) : Operand(act.data()), t,
                                      inter_, c_));
    act.Release();
    act16.Release();
    DArray<float> dgate, dup;
    DArray<Bf16> dgate16, dup16;
    if (fused) {
      CF_RETURN_IF_ERROR(Alloc(dgate16, kS, n, "gate gradient (bf16)"));
      CF_RETURN_IF_ERROR(Alloc(dup16, kS, n, "up gradient (bf16)"));
      CF_LAUNCH(packed ? kc::swiglu_backward_bf16(dgate16.data(), dup16.data(), dact.data(),
                                                  gate16, up16, n, st)
                       : kc::swiglu_backward_bf16(dgate16.data(), dup16.data(), dact.data(),
                                                  a.gate.data(), a.up.data(), n, st));
    } else {
      CF_RETURN_IF_ERROR(Alloc(dgate, kS, n, "gate gradient", true));
      CF_RETURN_IF_ERROR(Alloc(dup, kS, n, "up gradient", true));
      CF_LAUNCH(kc::swiglu_backward(dgate.data(), dup.data(), dact.data(), a.gate.data(),
                                    a.up.data(), n, st));
    }
    dact.Release();
    DArray<float> dh;
    CF_RETURN_IF_ERROR(Alloc(dh, kS, t * c_, "normed gradient", true));
    CF_RETURN_IF_ERROR(LinearBackward(dh.data(), w.wg, nullptr,
                                      fused ? Operand(dgate16.data()) : Operand(dgate.data()),
                                      hn.operand(), t, c_, inter_));
    CF_RETURN_IF_ERROR(LinearBackward(dh.data(), w.wu, nullptr,
                                      fused ? Operand(dup16.data()) : Operand(dup.data()),
                                      hn.operand(), t, c_, inter_));
    hn = Normed();
    // dx becomes the gradient of x' (residual plus the MLP branch).
    // With the rstd just recomputed from x' (bit-identical to the stored one
    // in fp32; consistent with the bf16-stored x' otherwise).
    CF_LAUNCH(kc::rmsnorm_backward(dx, G(w.ln2), dh.data(), a.xmid.data(), W(w.ln2), rstd.data(),
                                   t, c_, st));
    for (DArray<float>* p : {&wide.xmid, &wide.gate, &wide.up}) p->Release();
  }
  // Attention.
  DArray<float> datt, dq;
  CF_RETURN_IF_ERROR(Alloc(datt, kS, t * qd_, "attention output gradient", true));
  CF_RETURN_IF_ERROR(Alloc(dq, kS, t * qd_, "q gradient", true));
  CF_RETURN_IF_ERROR(LinearBackward(
      datt.data(), w.wo, nullptr, dx,
      packed ? Operand(kept.packed.data() + off.att) : Operand(kept.att.data()), t, qd_, c_));
  CF_RETURN_IF_ERROR(widen(&LayerActs::q, off.q, t * qd_));
  CF_RETURN_IF_ERROR(widen(&LayerActs::att, off.att, t * qd_));
  StateWindows windows(&state_, l);
  for (const PieceRows& p : in.pieces) {
    CF_RETURN_IF_ERROR(windows.Acquire(p.seq, p.offset + p.length, /*grads=*/true));
  }
  const std::vector<kc::AttentionSegment> segs = Segments(in, l);
  if (flash_) {
    const absl::StatusOr<int64_t> ws_floats = kc::flash_attention_backward_workspace(
        segs.data(), static_cast<int64_t>(segs.size()), h, hk, d, t);
    if (!ws_floats.ok()) return ws_floats.status();
    DArray<float> workspace;  // delta, bf16 Q / dO / K / V, dk/dv's partial sums
    CF_RETURN_IF_ERROR(Alloc(workspace, kS, *ws_floats, "attention backward workspace"));
    CF_RETURN_IF_ERROR(kc::flash_attention_backward(
        dq.data(), segs.data(), static_cast<int64_t>(segs.size()), datt.data(), a.q.data(),
        a.att.data(), lse, h, hk, d, t, workspace.data(), *ws_floats, st));
  } else {
    CF_RETURN_IF_ERROR(kc::attention_backward(dq.data(), segs.data(),
                                              static_cast<int64_t>(segs.size()), datt.data(),
                                              a.q.data(), a.att.data(), lse, h, hk, d,
                                              st));
  }
  datt.Release();
  wide.q.Release();
  wide.att.Release();
  // dK/dV of this chunk's rows are complete now: every later chunk of the
  // sequence has run its backward.
  DArray<float> dqp, dkr, dkp, dvv;
  CF_RETURN_IF_ERROR(Alloc(dqp, kS, t * qd_, "q gradient (pre-rope)", true));
  CF_RETURN_IF_ERROR(Alloc(dkr, kS, t * kvd_, "k gradient", true));
  CF_RETURN_IF_ERROR(Alloc(dkp, kS, t * kvd_, "k gradient (pre-rope)", true));
  CF_RETURN_IF_ERROR(Alloc(dvv, kS, t * kvd_, "v gradient", true));
  CF_LAUNCH(kc::rope_backward(dqp.data(), dq.data(), rows.positions.data(), t, h, d, theta, st));
  dq.Release();
  windows.Handover();
  for (const PieceRows& p : in.pieces) {
    CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, dkr.data() + p.row * kvd_,
                                    state_.dk(p.seq, l) + p.offset * kvd_, p.length * kvd_ * kF,
                                    "state dK"));
    CF_RETURN_IF_ERROR(CopyOnDevice(*ctx_, dvv.data() + p.row * kvd_,
                                    state_.dv(p.seq, l) + p.offset * kvd_, p.length * kvd_ * kF,
                                    "state dV"));
    // Earlier chunks still need the dK/dV this backward added to rows
    // [0, offset); rows from offset on are done.
    CF_RETURN_IF_ERROR(state_.Release(p.seq, l, {0, 0}, /*grads_end=*/p.offset));
  }
  CF_LAUNCH(kc::rope_backward(dkp.data(), dkr.data(), rows.positions.data(), t, hk, d, theta, st));
  CF_RETURN_IF_ERROR(widen(&LayerActs::x, off.x, t * c_));
  CF_RETURN_IF_ERROR(NormForGemm(a.x.data(), w.ln1, rstd.data(), t, &hn));
  DArray<float> dh;
  CF_RETURN_IF_ERROR(Alloc(dh, kS, t * c_, "normed gradient", true));
  CF_RETURN_IF_ERROR(LinearBackward(dh.data(), w.wq, w.bq, dqp.data(), hn.operand(), t, c_, qd_));
  CF_RETURN_IF_ERROR(LinearBackward(dh.data(), w.wk, w.bk, dkp.data(), hn.operand(), t, c_, kvd_));
  CF_RETURN_IF_ERROR(LinearBackward(dh.data(), w.wv, w.bv, dvv.data(), hn.operand(), t, c_, kvd_));
  CF_LAUNCH(kc::rmsnorm_backward(dx, G(w.ln1), dh.data(), a.x.data(), W(w.ln1), rstd.data(), t,
                                 c_, st));
  return absl::OkStatus();
}

}  // namespace chunkflow::engine::cuda
