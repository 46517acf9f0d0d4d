// The state store (worker/engine/state_store.h) on the device: per sequence
// and layer of a stage, the K (after RoPE) and V of every position forwarded
// so far and the dK/dV flowing back into them, in device arrays counted as
// MemoryTracker::kState. Same contract as the CPU store: the first Grow of a
// sequence allocates its whole length (zeroed), so later chunks never
// reallocate; Truncate(seq, 0) forgets the sequence and returns its memory
// to the allocator's cache.
//
// Offload: a sequence's state lives in pinned host memory instead, and a
// layer's K/V (and dK/dV) of it come onto the device only while a chunk
// works on that layer: Acquire copies rows
// [0, rows) in, Release copies back what the chunk wrote and frees the
// device window. Device memory for the state drops from every sequence x
// every layer to the pieces of one chunk x one layer, for PCIe traffic of
// the sequence's rows per layer and chunk. Copies and kernels share the
// context's stream, so no host wait is needed between a Release and the
// next Acquire. Pinned buffers are kept and reused across sequences and
// steps (pinning and unpinning are slow, and cudaFreeHost waits for the
// whole device); they go back to the system with the store. For a sequence
// on the device, Acquire, Release and Discard do nothing.
//
// Where a sequence's state goes is decided when it is first grown
// (StateOffload): always the device, always the host, or (kAuto) the device
// when the whole state fits the device memory available now with the
// caller's headroom left free, the host otherwise - a long sequence whose
// state does not fit is offloaded instead of failing the step, and the
// short ones stay on the device.
//
//   DeviceStateStore store(ctx, layers, kv_dim, &mem, StateOffload::kAuto);
//   RETURN_IF_ERROR(store.Grow(seq, offset + length, seq_length, /*grads=*/true,
//                              /*headroom_bytes=*/working_set));
//   RETURN_IF_ERROR(store.Acquire(seq, layer, /*kv_rows=*/offset, /*grads=*/false));
//   float* k = store.k(seq, layer);          // device, rows(seq) x kv_dim at least
//   ...
//   RETURN_IF_ERROR(store.Release(seq, layer, {offset, offset + length}, /*grads_end=*/0));

#ifndef CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_STATE_STORE_H_
#define CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/cuda/device.h"
#include "worker/engine/memory.h"

namespace chunkflow::engine::cuda {

enum class StateOffload {
  kNever,   // every sequence's state on the device (over the budget: the step fails)
  kAlways,  // every sequence's state in pinned host memory
  kAuto,    // on the device while it fits the memory available, else pinned host memory
};

// "never", "always", "auto" (flags and logs).
const char* StateOffloadName(StateOffload mode);
// Errors: INVALID_ARGUMENT naming the value and the choices.
absl::StatusOr<StateOffload> ParseStateOffload(absl::string_view name);

class DeviceStateStore {
 public:
  DeviceStateStore(DeviceContext* ctx, int64_t layers, int64_t kv_dim, MemoryTracker* mem,
                   StateOffload mode = StateOffload::kNever)
      : ctx_(ctx), layers_(layers), kv_dim_(kv_dim), mem_(mem), mode_(mode) {}
  DeviceStateStore(const DeviceStateStore&) = delete;
  DeviceStateStore& operator=(const DeviceStateStore&) = delete;
  ~DeviceStateStore();

  StateOffload mode() const { return mode_; }

  // Makes rows [0, rows) of `seq` exist at every layer (never shrinks). The
  // first Grow of a sequence places it. kAuto: on the device when its whole
  // state fits DeviceContext::AvailableBytes() with headroom_bytes and the
  // largest offloaded window left free (and still does once allocated: the
  // cache may hand out larger blocks); else in pinned host memory; if the
  // chosen place runs out, the other one. Errors: RESOURCE_EXHAUSTED (over the memory
  // budget, or no pinned memory) naming the sequence; INVALID_ARGUMENT when
  // rows exceed the length the sequence was first grown with.
  absl::Status Grow(int64_t seq, int64_t rows, int64_t seq_length, bool grads,
                    int64_t headroom_bytes = 0);
  void Truncate(int64_t seq, int64_t rows);
  void Clear();

  // Offloaded sequences only: a device window of layer `layer` of `seq` (rows(seq)
  // rows), holding K/V rows [0, kv_rows) from the host (rows the caller is
  // about to write need not come in) and, with `grads`, dK/dV of every row
  // (without, dk/dv are null). Valid until Release or Discard. Errors:
  // RESOURCE_EXHAUSTED (the window does not fit), FAILED_PRECONDITION
  // (already acquired, unknown sequence).
  absl::Status Acquire(int64_t seq, int64_t layer, int64_t kv_rows, bool grads);
  // Copies K/V rows [kv_rows.first, kv_rows.second) and dK/dV rows
  // [0, grads_end) back to the host and frees the window.
  absl::Status Release(int64_t seq, int64_t layer, std::pair<int64_t, int64_t> kv_rows,
                       int64_t grads_end);
  // Frees the window without copying anything back (an op that failed).
  void Discard(int64_t seq, int64_t layer);

  bool Has(int64_t seq) const { return seqs_.count(seq) > 0; }
  // Whether the sequence's state is in pinned host memory.
  bool offloaded(int64_t seq) const;
  // Live sequences whose state is offloaded.
  int64_t offloaded_sequences() const;
  // The bytes of a sequence's whole state (every layer; K/V, and dK/dV with
  // grads) of `capacity` rows.
  int64_t StateBytes(int64_t capacity, bool grads) const;
  // One layer's share of that: what an offloaded sequence brings onto the
  // device at a time.
  int64_t WindowBytes(int64_t capacity, bool grads) const {
    return layers_ > 0 ? StateBytes(capacity, grads) / layers_ : 0;
  }
  // The most one layer's window of a live offloaded sequence takes on the
  // device while acquired.
  int64_t LargestOffloadedWindowBytes() const;

  // Pins host memory now for sequences of these capacities (rows) to be
  // offloaded later, so their first Grow finds it cached: cudaHostAlloc
  // synchronises the device, which must not happen while a step's NCCL
  // operations are in flight. Best effort: what cannot be pinned now is
  // pinned by Grow. Returns the bytes newly pinned.
  int64_t ReservePinned(const std::vector<int64_t>& capacities, bool grads);
  // Bytes Grow pinned since Clear because no reserved buffer fitted: what
  // the step-start reservation missed (each pin synchronised the device).
  int64_t pinned_mid_step_bytes() const { return pinned_mid_step_bytes_; }
  int64_t rows(int64_t seq) const;
  int64_t sequences() const { return static_cast<int64_t>(seqs_.size()); }

  float* k(int64_t seq, int64_t layer) { return Get(seq, layer).k.data(); }
  float* v(int64_t seq, int64_t layer) { return Get(seq, layer).v.data(); }
  float* dk(int64_t seq, int64_t layer) { return Get(seq, layer).dk.data(); }
  float* dv(int64_t seq, int64_t layer) { return Get(seq, layer).dv.data(); }

 private:
  // Pinned host memory (cudaHostAlloc) of n floats, owned by the store.
  struct HostArray {
    float* p = nullptr;
    int64_t n = 0;
  };
  struct Layer {
    DeviceArray<float> k, v, dk, dv;   // on the device, or the window while acquired
    HostArray hk, hv, hdk, hdv;        // offload: the state itself
    bool acquired = false;
  };
  struct Seq {
    int64_t rows = 0;
    int64_t capacity = 0;
    int64_t dirty_end = 0;  // rows >= dirty_end are still zero
    bool grads = true;
    bool offloaded = false;
    std::vector<Layer> layers;
  };
  absl::Status NewLayer(int64_t seq, const Seq& s, Layer* layer);
  // Every layer of a new sequence, where s.offloaded says; on an error
  // nothing stays allocated.
  absl::Status AllocateLayers(int64_t seq, Seq& s);
  // A zeroed pinned buffer of n floats (reused when one is cached).
  absl::Status TakePinned(int64_t seq, int64_t n, HostArray* out);
  // The sequence's pinned buffers back to the cache (after a stream wait:
  // queued copies may still target them).
  void DropPinned(Seq& s);
  Layer& Get(int64_t seq, int64_t layer) { return seqs_.at(seq).layers[layer]; }

  DeviceContext* ctx_;
  int64_t layers_;
  int64_t kv_dim_;
  MemoryTracker* mem_;
  StateOffload mode_;
  std::map<int64_t, Seq> seqs_;
  std::multimap<int64_t, float*> pinned_cache_;  // n -> free pinned buffer
  int64_t pinned_mid_step_bytes_ = 0;
};

}  // namespace chunkflow::engine::cuda

#endif  // CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_STATE_STORE_H_
