// One pipeline stage on a CUDA device: the twin of engine::Stage (stage.h),
// same op order, same activations kept, same state-store contract, every op
// a kernels/cuda twin of the CPU op, all on the context's one stream.
//
// Parameters: the fp32 master weights, their fp32 gradients and the AdamW
// moments live on the device in the flat layout of engine::StageParams (the
// host StageParams stays the source for initialisation, loading and names;
// Upload / Download move values between the two). With Precision::kBf16 a
// bf16 copy of the weights, refreshed after every update, feeds the GEMMs:
// each GEMM's inputs are rounded to bf16, products are accumulated in fp32
// and every output and gradient is fp32 (norms, RoPE, softmax, attention and
// the loss run in fp32); the activations kept for the backward are stored
// in bf16 (CudaStageOptions::bf16_activations). Precision::kFp32 runs every GEMM in
// pedantic fp32, so the stage can be held to the CPU oracle tightly.
//
// The LM head runs in row blocks of kHeadRows (the (rows, V) logits tile is
// bounded); its backward fuses the softmax cross-entropy and its gradient
// into one in-place pass over the tile (cuda::cross_entropy_fused).
// Attention runs the flash-style kernel (bf16 tiles on the tensor cores) or
// the exact fp32 reference kernel (CudaStageOptions::attention).
//
//   absl::StatusOr<std::unique_ptr<CudaStage>> s =
//       CudaStage::Create(&params, ctx.get(), &mem, CudaStageOptions{});
//   (*s)->Forward(in, x_host, y_host, ForwardKind::kKeep);     // StageExecutor
//   (*s)->ForwardDevice(in, x_dev, y_dev, ForwardKind::kKeep); // device pointers

#ifndef CHUNKFLOW_WORKER_ENGINE_CUDA_CUDA_STAGE_H_
#define CHUNKFLOW_WORKER_ENGINE_CUDA_CUDA_STAGE_H_

#include <cuda_bf16.h>

#include <cstdint>
#include <functional>
#include <algorithm>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/ops.h"
#include "worker/engine/chunk_input.h"
#include "worker/engine/cuda/device.h"
#include "worker/engine/cuda/device_state_store.h"
#include "worker/engine/engine.h"
#include "worker/engine/memory.h"
#include "worker/engine/params.h"
#include "worker/engine/stage_executor.h"

namespace chunkflow::engine::cuda {

enum class Precision {
  kFp32,  // every GEMM in fp32 (the oracle check)
  kBf16,  // GEMM inputs in bf16, fp32 accumulation (training)
};

enum class AttentionKernel {
  kAuto,       // flash with Precision::kBf16 where the head dim allows, else the reference
  kReference,  // kernels/cuda/attention.h: exact fp32 (the oracle check)
  kFlash,      // kernels/cuda/flash_attention.h: tensor cores, bf16 tiles
};

struct CudaStageOptions {
  Precision precision = Precision::kBf16;
  AttentionKernel attention = AttentionKernel::kAuto;
  // Rows of the LM head evaluated at once (bounds the logits tile).
  int64_t head_rows = 1024;
  // Where each sequence's state (K/V and their gradients) lives
  // (DeviceStateStore): kAuto keeps it on the device while its whole state
  // fits the memory limit with the stage's working set left free (the most
  // activations + scratch have held so far, at least an estimate of this
  // chunk's), and otherwise in pinned host memory, one layer of a chunk's
  // sequences on the device at a time. kNever fails an over-budget step
  // instead; kAlways offloads every sequence.
  StateOffload offload_state = StateOffload::kAuto;
  // With Precision::kBf16 and the flash kernel: keep each layer's
  // activations for the backward in bf16 (x, q, attention output, x', gate,
  // up; rstd and lse stay fp32), widened again for the layer's backward.
  // Little more than half the activation memory.
  bool bf16_activations = true;
  // With Precision::kBf16: the elementwise ops feeding the GEMMs write their
  // bf16 operands themselves (kernels/cuda/ops.h's *_bf16 fusions): RMSNorm
  // its normed output, SwiGLU its activation (and the kept gate / up), its
  // backward the gate / up gradients, the LM head's fused cross-entropy the
  // logits gradient; the backward's SwiGLU reads the kept bf16 gate / up as
  // they are. (Each GEMM input is converted once either way.) false runs the fp32 op and
  // float_to_bf16 as two kernels: the same bits (tested), more memory
  // traffic - kept to time the difference (cuda_step_bench --variants).
  bool fused_elementwise = true;
};

class CudaStage : public StageExecutor {
 public:
  // Allocates the stage's parameters on ctx's device and uploads params'
  // values. `params`, `ctx` and `mem` must outlive the stage. Errors:
  // RESOURCE_EXHAUSTED (over the budget), INTERNAL naming the call,
  // INVALID_ARGUMENT (head_rows < 1; kFlash with a head dim it does not
  // support).
  static absl::StatusOr<std::unique_ptr<CudaStage>> Create(StageParams* params, DeviceContext* ctx,
                                                           MemoryTracker* mem,
                                                           const CudaStageOptions& options);

  // StageExecutor: x, y, dy, dx are host memory.
  absl::Status Forward(const ChunkInput& in, const float* x, float* y, ForwardKind kind) override;
  absl::Status Backward(const ChunkInput& in, const float* dy, float* dx) override;
  void set_loss_scale(float scale) override { loss_scale_ = scale; }
  const std::map<int64_t, SequenceLoss>& losses() const override { return losses_; }
  void ClearLosses() override { losses_.clear(); }
  void Reset() override;
  int64_t hidden_size() const override { return c_; }
  int64_t live_chunks() const override { return static_cast<int64_t>(acts_.size()); }
  int64_t live_sequences() const override { return state_.sequences(); }
  // The sequences whose state went to pinned host memory since Reset (a
  // step's).
  const std::set<int64_t>& offloaded_this_step() const { return offloaded_; }
  // Host memory pinned by the ops since Reset, where PrepareStep's
  // prediction missed a sequence (0 when it did not).
  int64_t pinned_mid_step_bytes() const { return state_.pinned_mid_step_bytes(); }
  // How many chunks' activations this step's op list keeps at once
  // (MaxChunksHeld; the engine and the step runner set it per step): kAuto
  // leaves room for that many chunks' working sets.
  void set_chunks_held(int64_t n) { chunks_held_ = std::max<int64_t>(n, 1); }
  // Before a step's ops (while no NCCL work is in flight): pins the host
  // memory of the sequences the step will offload - all with kAlways; with
  // kAuto those predicted not to fit or within a chunk's working-set
  // estimate of the edge, replaying the step's state events
  // (StateTimelineOf) as Grow will meet them, each sequence's room being
  // what the live ones before it and the chunks then held leave - so that
  // no op pins (and synchronises the device) mid-step. Returns the bytes
  // pinned.
  int64_t PrepareStep(const StateTimeline& timeline);
  // The activations + scratch a forward of `rows` rows adds (the kept
  // activations of every layer - none for inference -, one layer's scratch,
  // the LM head's logits tile): kAuto's headroom per chunk before the
  // working set's high water says more.
  int64_t EstimateChunkWorkingBytes(int64_t rows, ForwardKind kind) const;

  // The reference attention kernel (exact fp32, one thread per query row)
  // is for checks: sequences beyond this many keys are refused on it.
  static constexpr int64_t kReferenceAttentionMaxKeys = 16384;

  // The same with x, y, dy, dx in device memory of this context (a device
  // transport's buffers); y / dx may be null where the stage has no
  // neighbour that way.
  absl::Status ForwardDevice(const ChunkInput& in, const float* x, float* y, ForwardKind kind);
  absl::Status BackwardDevice(const ChunkInput& in, const float* dy, float* dx);

  // When set, forwards on the last stage append each row's logits (V floats)
  // to `sink`, in row order (tests).
  void set_logits_sink(std::vector<float>* sink) { logits_sink_ = sink; }

  // When set, BackwardDevice calls it once each layer's backward is
  // enqueued on the stream (stage-local layer index, last layer first); its
  // error fails the op. The step runner starts the dp all-reduce of a
  // layer's finished gradients from it, overlapping the rest of the
  // backward.
  void set_layer_backward_hook(std::function<absl::Status(int64_t layer)> hook) {
    layer_hook_ = std::move(hook);
  }

  // --- parameters ---------------------------------------------------------
  // Host StageParams values -> device (and the bf16 copy).
  absl::Status UploadParams();
  // Device values / gradients -> the host StageParams' buffers.
  absl::Status DownloadParams();
  absl::Status DownloadGrads();
  // The host StageParams' gradients -> device (after a host-side reduction).
  absl::Status UploadGrads();
  absl::Status ZeroGrads();
  float* device_values() { return values_.data(); }
  float* device_grads() { return grads_.data(); }
  int64_t numel() const { return params_->numel(); }
  bool uses_flash_attention() const { return flash_; }

  // --- optimizer on the device ----------------------------------------------
  // Sum of squared gradients, as engine::StageGradSquares (a tied embedding's
  // copy on a last stage that is not the first is left out).
  absl::StatusOr<double> GradSquares();
  absl::Status ScaleGrads(float factor);
  // One update as engine::ApplyUpdate (per-tensor decay, `step` 1-based),
  // then the bf16 copy is refreshed.
  absl::Status ApplyUpdate(int64_t step, const TrainOptions& options);
  // The AdamW moments (flat, host) in and out.
  absl::Status SetMoments(const std::vector<float>& m, const std::vector<float>& v);
  absl::Status GetMoments(std::vector<float>* m, std::vector<float>* v);

 private:
  using Bf16 = __nv_bfloat16;
  template <typename T>
  using DArray = DeviceArray<T>;

  struct LayerActs {
    DArray<float> x, rstd1, q, att, lse, xmid, rstd2, gate, up;
    // bf16 storage: x, q, att, xmid, gate, up back to back (the fp32 ones
    // are released once packed).
    DArray<Bf16> packed;
  };
  struct ChunkActs {
    DArray<float> input;
    std::vector<LayerActs> layers;
    DArray<float> xfinal;
    bool has_activations = false;
  };
  // A chunk's token ids, targets and positions on the device.
  struct ChunkRows {
    DArray<int32_t> tokens, targets;
    DArray<int64_t> positions;
  };

  CudaStage(StageParams* params, DeviceContext* ctx, MemoryTracker* mem,
            const CudaStageOptions& options);

  template <typename T>
  absl::Status Alloc(DArray<T>& a, MemoryTracker::Kind kind, int64_t n, const char* what,
                     bool zero = false);
  absl::Status UploadRows(const ChunkInput& in, ChunkRows* rows);
  std::vector<kernels::cuda::AttentionSegment> Segments(const ChunkInput& in, int64_t l);
  absl::Status RefreshBf16();
  // bf16 activation storage: `packed` holds x, q, att, xmid, gate and up
  // back to back (LayerForward writes each as it is made; LayerBackward
  // widens each into fp32 scratch where it needs it).
  struct PackedOffsets {  // in elements; total: the size of `packed`
    int64_t x, q, att, xmid, gate, up, total;
  };
  PackedOffsets Offsets(int64_t t) const;

  // Device pointers of a host weight / gradient pointer of params_'s views.
  const float* W(const float* host) const;
  const Bf16* WB(const float* host) const;
  float* G(const float* host);

  // A GEMM operand: fp32, or already in bf16 (read as it is by the bf16
  // GEMMs; an fp32 one is converted for them). Precision::kFp32 takes fp32
  // only.
  struct Operand {
    Operand(const float* p) : f32(p) {}  // NOLINT: implicit, as a pointer
    Operand(const Bf16* p) : b16(p) {}   // NOLINT
    Operand At(int64_t offset) const {
      return f32 != nullptr ? Operand(f32 + offset) : Operand(b16 + offset);
    }
    const float* f32 = nullptr;
    const Bf16* b16 = nullptr;
  };
  // The normed hidden state a branch's GEMMs read, in their precision: bf16
  // made once for all of them (fused, or rmsnorm_forward and one
  // conversion), fp32 under Precision::kFp32.
  struct Normed {
    DArray<float> f32;
    DArray<Bf16> b16;
    Operand operand() const {
      return b16.empty() ? Operand(f32.data()) : Operand(b16.data());
    }
  };
  absl::Status NormForGemm(const float* x, const float* weight, float* rstd, int64_t t,
                           Normed* out);
  bool bf16() const { return options_.precision == Precision::kBf16; }

  // x in bf16: as it is, or converted into `scratch` (n elements).
  absl::StatusOr<const Bf16*> InBf16(Operand x, int64_t n, DArray<Bf16>* scratch,
                                     const char* what);
  absl::Status Linear(float* out, Operand inp, const float* w, const float* b, int64_t T,
                      int64_t IC, int64_t OC);
  // A bias gradient needs dout in fp32.
  absl::Status LinearBackward(float* dinp, const float* w, const float* b, Operand dout,
                              Operand inp, int64_t T, int64_t IC, int64_t OC);

  // FAILED_PRECONDITION naming the sequence when the reference kernel would
  // attend to a sequence longer than kReferenceAttentionMaxKeys.
  absl::Status CheckReferenceAttention(const ChunkInput& in) const;
  absl::Status LayerForward(int64_t l, const ChunkInput& in, const ChunkRows& rows, bool write_kv,
                            MemoryTracker::Kind kind, LayerActs& a, float* inout);
  absl::Status LayerBackward(int64_t l, const ChunkInput& in, const ChunkRows& rows,
                             const LayerActs& a, float* dx);
  absl::Status HeadLoss(const ChunkInput& in, const ChunkRows& rows, const float* xfinal);
  absl::Status HeadBackward(const ChunkInput& in, const ChunkRows& rows, const float* xfinal,
                            float* dx);

  StageParams* params_;
  DeviceContext* ctx_;
  MemoryTracker* mem_;
  CudaStageOptions options_;
  DeviceStateStore state_;
  int64_t c_, qd_, kvd_, inter_, vocab_;
  float loss_scale_ = 1.0f;
  bool flash_ = false;
  bool pack_ = false;
  std::set<int64_t> offloaded_;
  int64_t chunks_held_ = 1;

  DArray<float> values_, grads_, m_, v_;
  DArray<Bf16> values_bf16_;
  DArray<kernels::cuda::TensorSpan> spans_;
  DArray<double> norm_scratch_;  // sum_of_squares: partials + result

  std::map<int32_t, ChunkActs> acts_;
  std::map<int64_t, SequenceLoss> losses_;
  std::vector<float>* logits_sink_ = nullptr;
  std::function<absl::Status(int64_t)> layer_hook_;
};

}  // namespace chunkflow::engine::cuda

#endif  // CHUNKFLOW_WORKER_ENGINE_CUDA_CUDA_STAGE_H_
