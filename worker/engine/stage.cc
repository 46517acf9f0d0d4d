#include "worker/engine/stage.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/linear.h"
#include "kernels/cpu/rmsnorm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/swiglu.h"

namespace chunkflow::engine {

namespace k = ::chunkflow::kernels::cpu;

namespace {

// Rows of the LM head evaluated at once: bounds the (rows, V) logits tile.
constexpr int64_t kHeadRows = 128;

void Copy(float* dst, const float* src, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void AddTo(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

}  // namespace

Stage::Stage(StageParams* params, MemoryTracker* mem)
    : params_(params),
      mem_(mem),
      state_(params->range().end_layer - params->range().first_layer, params->config().kv_dim(),
             mem),
      c_(params->config().hidden_size),
      qd_(params->config().num_attention_heads * params->config().head_dim()),
      kvd_(params->config().kv_dim()),
      inter_(params->config().intermediate_size),
      vocab_(params->config().vocab_size) {}

TrackedBuffer Stage::Buf(MemoryTracker::Kind kind, int64_t n) {
  TrackedBuffer b(mem_, kind);
  b.Resize(n);
  return b;
}

void Stage::Reset() {
  acts_.clear();
  state_.Clear();
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

absl::Status Stage::Forward(const ChunkInput& in, const float* x, float* y, ForwardKind kind) {
  const StageRange& r = params_->range();
  const int64_t t = in.rows;
  auto it = acts_.find(in.id);
  const bool held = it != acts_.end();
  if (absl::Status s = CheckForwardOrder(in, kind, held, held && it->second.has_activations,
                                         [this](int64_t seq) { return state_.rows(seq); });
      !s.ok()) {
    return s;
  }
  if (kind != ForwardKind::kRecompute) {
    for (const PieceRows& p : in.pieces) {
      state_.Grow(p.seq, p.offset + p.length, p.seq_length, kind != ForwardKind::kInference);
    }
  }
  const bool keep = kind == ForwardKind::kKeep || kind == ForwardKind::kRecompute;
  ChunkActs local;
  ChunkActs& ca = kind == ForwardKind::kInference ? local : acts_[in.id];

  TrackedBuffer cur = Buf(MemoryTracker::kScratch, t * c_);
  if (r.first) {
    k::embedding_forward(cur.data(), in.tokens.data(), params_->weights().embed, t, c_);
  } else if (kind == ForwardKind::kRecompute) {
    Copy(cur.data(), ca.input.data(), t * c_);
    ca.input.Release();
  } else {
    Copy(cur.data(), x, t * c_);
    if (kind == ForwardKind::kDrop) {
      ca.input = Buf(MemoryTracker::kActivations, t * c_);
      Copy(ca.input.data(), x, t * c_);
    }
  }

  const int64_t layers = r.end_layer - r.first_layer;
  LayerActs scratch;
  if (keep) ca.layers.resize(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    LayerForward(l, in, kind != ForwardKind::kRecompute,
                 keep ? MemoryTracker::kActivations : MemoryTracker::kScratch,
                 keep ? ca.layers[l] : scratch, cur.data());
  }
  if (r.last) {
    // The loss is counted by the first forward; a recompute only keeps the
    // final hidden state (the backward evaluates the head from it).
    if (kind != ForwardKind::kRecompute) HeadLoss(in, cur.data());
    if (keep) {
      ca.xfinal = Buf(MemoryTracker::kActivations, t * c_);
      Copy(ca.xfinal.data(), cur.data(), t * c_);
    }
  } else {
    Copy(y, cur.data(), t * c_);
  }
  ca.has_activations = keep;
  return absl::OkStatus();
}

std::vector<k::AttentionSegment> Stage::Segments(const ChunkInput& in, int64_t l) {
  return AttentionSegments<k::AttentionSegment>(in, l, state_);
}

void Stage::LayerForward(int64_t l, const ChunkInput& in, bool write_kv, MemoryTracker::Kind kind,
                         LayerActs& a, float* inout) {
  const ModelConfig& cfg = params_->config();
  const LayerView w = params_->weights().layers[l];
  const int64_t t = in.rows, h = cfg.num_attention_heads, hk = cfg.num_key_value_heads;
  const int64_t d = cfg.head_dim();
  const float eps = static_cast<float>(cfg.rms_norm_eps);
  const float theta = static_cast<float>(cfg.rope_theta);

  a.x = Buf(kind, t * c_);
  Copy(a.x.data(), inout, t * c_);
  a.rstd1 = Buf(kind, t);
  TrackedBuffer hn = Buf(MemoryTracker::kScratch, t * c_);
  k::rmsnorm_forward(hn.data(), a.rstd1.data(), a.x.data(), w.ln1, t, c_, eps);
  a.q = Buf(kind, t * qd_);
  k::linear_forward(a.q.data(), hn.data(), w.wq, w.bq, t, c_, qd_);
  k::rope_forward(a.q.data(), a.q.data(), in.positions.data(), t, h, d, theta);
  if (write_kv) {
    // A recompute reads the K/V its first forward left in the state store.
    TrackedBuffer kb = Buf(MemoryTracker::kScratch, t * kvd_);
    TrackedBuffer vb = Buf(MemoryTracker::kScratch, t * kvd_);
    k::linear_forward(kb.data(), hn.data(), w.wk, w.bk, t, c_, kvd_);
    k::linear_forward(vb.data(), hn.data(), w.wv, w.bv, t, c_, kvd_);
    k::rope_forward(kb.data(), kb.data(), in.positions.data(), t, hk, d, theta);
    for (const PieceRows& p : in.pieces) {
      Copy(state_.k(p.seq, l) + p.offset * kvd_, kb.data() + p.row * kvd_, p.length * kvd_);
      Copy(state_.v(p.seq, l) + p.offset * kvd_, vb.data() + p.row * kvd_, p.length * kvd_);
    }
  }
  a.att = Buf(kind, t * qd_);
  a.lse = Buf(kind, t * h);
  const std::vector<k::AttentionSegment> segs = Segments(in, l);
  k::attention_forward(a.att.data(), a.lse.data(), a.q.data(), segs.data(),
                       static_cast<int64_t>(segs.size()), h, hk, d);
  TrackedBuffer tmp = Buf(MemoryTracker::kScratch, t * c_);
  k::linear_forward(tmp.data(), a.att.data(), w.wo, nullptr, t, qd_, c_);
  a.xmid = Buf(kind, t * c_);
  Copy(a.xmid.data(), a.x.data(), t * c_);
  AddTo(a.xmid.data(), tmp.data(), t * c_);

  a.rstd2 = Buf(kind, t);
  k::rmsnorm_forward(hn.data(), a.rstd2.data(), a.xmid.data(), w.ln2, t, c_, eps);
  a.gate = Buf(kind, t * inter_);
  a.up = Buf(kind, t * inter_);
  k::linear_forward(a.gate.data(), hn.data(), w.wg, nullptr, t, c_, inter_);
  k::linear_forward(a.up.data(), hn.data(), w.wu, nullptr, t, c_, inter_);
  TrackedBuffer act = Buf(MemoryTracker::kScratch, t * inter_);
  k::swiglu_forward(act.data(), a.gate.data(), a.up.data(), t * inter_);
  k::linear_forward(tmp.data(), act.data(), w.wd, nullptr, t, inter_, c_);
  Copy(inout, a.xmid.data(), t * c_);
  AddTo(inout, tmp.data(), t * c_);
}

void Stage::HeadLoss(const ChunkInput& in, const float* xfinal) {
  const StageView w = params_->weights();
  const int64_t t = in.rows;
  TrackedBuffer hf = Buf(MemoryTracker::kScratch, t * c_);
  TrackedBuffer rstd = Buf(MemoryTracker::kScratch, t);
  k::rmsnorm_forward(hf.data(), rstd.data(), xfinal, w.final_norm, t, c_,
                     static_cast<float>(params_->config().rms_norm_eps));
  TrackedBuffer logits = Buf(MemoryTracker::kScratch, std::min(t, kHeadRows) * vocab_);
  std::vector<float> losses(static_cast<size_t>(t));
  for (int64_t r0 = 0; r0 < t; r0 += kHeadRows) {
    const int64_t n = std::min(kHeadRows, t - r0);
    k::linear_forward(logits.data(), hf.data() + r0 * c_, w.head, nullptr, n, c_, vocab_);
    k::cross_entropy_forward(losses.data() + r0, logits.data(), in.targets.data() + r0, n, vocab_);
    if (logits_sink_) logits_sink_->insert(logits_sink_->end(), logits.data(), logits.data() + n * vocab_);
  }
  for (const PieceRows& p : in.pieces) {
    SequenceLoss& sl = losses_[p.seq];
    for (int64_t i = p.row; i < p.row + p.length; ++i) {
      if (in.targets[i] == kIgnoreIndex) continue;
      sl.sum += losses[i];
      ++sl.count;
    }
  }
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

absl::Status Stage::Backward(const ChunkInput& in, const float* dy, float* dx) {
  const StageRange& r = params_->range();
  const int64_t t = in.rows;
  auto it = acts_.find(in.id);
  const bool held = it != acts_.end();
  if (absl::Status s = CheckBackwardOrder(in, held, held && it->second.has_activations,
                                          [this](int64_t seq) { return state_.rows(seq); });
      !s.ok()) {
    return s;
  }
  ChunkActs& ca = it->second;
  TrackedBuffer dcur = Buf(MemoryTracker::kScratch, t * c_);
  if (r.last) {
    HeadBackward(in, ca.xfinal.data(), dcur.data());
    ca.xfinal.Release();
  } else {
    Copy(dcur.data(), dy, t * c_);
  }
  for (int64_t l = r.end_layer - r.first_layer - 1; l >= 0; --l) {
    LayerBackward(l, in, ca.layers[l], dcur.data());
    ca.layers[l] = LayerActs();
  }
  if (r.first) {
    k::embedding_backward(params_->grad_view().embed, dcur.data(), in.tokens.data(), t, c_);
  } else {
    Copy(dx, dcur.data(), t * c_);
  }
  // Earlier chunks never read these rows: free them (the first chunk frees
  // the sequence).
  for (const PieceRows& p : in.pieces) state_.Truncate(p.seq, p.offset);
  acts_.erase(it);
  return absl::OkStatus();
}

void Stage::HeadBackward(const ChunkInput& in, const float* xfinal, float* dx) {
  const StageView w = params_->weights();
  const StageView g = params_->grad_view();
  const int64_t t = in.rows;
  const float eps = static_cast<float>(params_->config().rms_norm_eps);
  TrackedBuffer hf = Buf(MemoryTracker::kScratch, t * c_);
  TrackedBuffer rstd = Buf(MemoryTracker::kScratch, t);
  k::rmsnorm_forward(hf.data(), rstd.data(), xfinal, w.final_norm, t, c_, eps);
  TrackedBuffer dhf = Buf(MemoryTracker::kScratch, t * c_);
  const int64_t rows = std::min(t, kHeadRows);
  TrackedBuffer logits = Buf(MemoryTracker::kScratch, rows * vocab_);
  TrackedBuffer dlogits = Buf(MemoryTracker::kScratch, rows * vocab_);
  std::vector<float> dlosses(static_cast<size_t>(t), loss_scale_);
  for (int64_t r0 = 0; r0 < t; r0 += kHeadRows) {
    const int64_t n = std::min(kHeadRows, t - r0);
    k::linear_forward(logits.data(), hf.data() + r0 * c_, w.head, nullptr, n, c_, vocab_);
    std::fill(dlogits.data(), dlogits.data() + n * vocab_, 0.0f);
    k::cross_entropy_backward(dlogits.data(), logits.data(), in.targets.data() + r0,
                              dlosses.data() + r0, n, vocab_);
    k::linear_backward(dhf.data() + r0 * c_, g.head, nullptr, dlogits.data(), hf.data() + r0 * c_,
                       w.head, n, c_, vocab_);
  }
  k::rmsnorm_backward(dx, g.final_norm, dhf.data(), xfinal, w.final_norm, rstd.data(), t, c_);
}

void Stage::LayerBackward(int64_t l, const ChunkInput& in, const LayerActs& a, float* dx) {
  const ModelConfig& cfg = params_->config();
  const LayerView w = params_->weights().layers[l];
  const LayerView g = params_->grad_view().layers[l];
  const int64_t t = in.rows, h = cfg.num_attention_heads, hk = cfg.num_key_value_heads;
  const int64_t d = cfg.head_dim();
  const float eps = static_cast<float>(cfg.rms_norm_eps);
  const float theta = static_cast<float>(cfg.rope_theta);
  constexpr MemoryTracker::Kind kS = MemoryTracker::kScratch;

  // MLP: dx is the gradient of the layer output.
  TrackedBuffer hn = Buf(kS, t * c_), rstd = Buf(kS, t);
  k::rmsnorm_forward(hn.data(), rstd.data(), a.xmid.data(), w.ln2, t, c_, eps);
  {
    TrackedBuffer act = Buf(kS, t * inter_), dact = Buf(kS, t * inter_);
    k::swiglu_forward(act.data(), a.gate.data(), a.up.data(), t * inter_);
    k::linear_backward(dact.data(), g.wd, nullptr, dx, act.data(), w.wd, t, inter_, c_);
    act.Release();
    TrackedBuffer dgate = Buf(kS, t * inter_), dup = Buf(kS, t * inter_);
    k::swiglu_backward(dgate.data(), dup.data(), dact.data(), a.gate.data(), a.up.data(),
                       t * inter_);
    dact.Release();
    TrackedBuffer dh = Buf(kS, t * c_);
    k::linear_backward(dh.data(), g.wg, nullptr, dgate.data(), hn.data(), w.wg, t, c_, inter_);
    k::linear_backward(dh.data(), g.wu, nullptr, dup.data(), hn.data(), w.wu, t, c_, inter_);
    // dx becomes the gradient of x' (residual plus the MLP branch).
    k::rmsnorm_backward(dx, g.ln2, dh.data(), a.xmid.data(), w.ln2, a.rstd2.data(), t, c_);
  }
  // Attention.
  TrackedBuffer datt = Buf(kS, t * qd_), dq = Buf(kS, t * qd_);
  k::linear_backward(datt.data(), g.wo, nullptr, dx, a.att.data(), w.wo, t, qd_, c_);
  const std::vector<k::AttentionSegment> segs = Segments(in, l);
  k::attention_backward(dq.data(), segs.data(), static_cast<int64_t>(segs.size()), datt.data(),
                        a.q.data(), a.att.data(), a.lse.data(), h, hk, d);
  datt.Release();
  // dK/dV of this chunk's rows are complete now: every later chunk of the
  // sequence has run its backward.
  TrackedBuffer dqp = Buf(kS, t * qd_), dkr = Buf(kS, t * kvd_), dkp = Buf(kS, t * kvd_);
  TrackedBuffer dvv = Buf(kS, t * kvd_);
  k::rope_backward(dqp.data(), dq.data(), in.positions.data(), t, h, d, theta);
  dq.Release();
  for (const PieceRows& p : in.pieces) {
    Copy(dkr.data() + p.row * kvd_, state_.dk(p.seq, l) + p.offset * kvd_, p.length * kvd_);
    Copy(dvv.data() + p.row * kvd_, state_.dv(p.seq, l) + p.offset * kvd_, p.length * kvd_);
  }
  k::rope_backward(dkp.data(), dkr.data(), in.positions.data(), t, hk, d, theta);
  k::rmsnorm_forward(hn.data(), rstd.data(), a.x.data(), w.ln1, t, c_, eps);
  TrackedBuffer dh = Buf(kS, t * c_);
  k::linear_backward(dh.data(), g.wq, g.bq, dqp.data(), hn.data(), w.wq, t, c_, qd_);
  k::linear_backward(dh.data(), g.wk, g.bk, dkp.data(), hn.data(), w.wk, t, c_, kvd_);
  k::linear_backward(dh.data(), g.wv, g.bv, dvv.data(), hn.data(), w.wv, t, c_, kvd_);
  k::rmsnorm_backward(dx, g.ln1, dh.data(), a.x.data(), w.ln1, a.rstd1.data(), t, c_);
}

}  // namespace chunkflow::engine
