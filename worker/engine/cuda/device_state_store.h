// The state store (worker/engine/state_store.h) on the device: per sequence
// and layer of a stage, the K (after RoPE) and V of every position forwarded
// so far and the dK/dV flowing back into them, in device arrays counted as
// MemoryTracker::kState. Same contract as the CPU store: the first Grow of a
// sequence allocates its whole length (zeroed), so later chunks never
// reallocate; Truncate(seq, 0) forgets the sequence and returns its memory
// to the allocator's cache.
//
//   DeviceStateStore store(ctx, layers, kv_dim, &mem);
//   RETURN_IF_ERROR(store.Grow(seq, offset + length, seq_length, /*grads=*/true));
//   float* k = store.k(seq, layer);          // device, (seq_length, kv_dim)

#ifndef CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_STATE_STORE_H_
#define CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/cuda/device.h"
#include "worker/engine/memory.h"

namespace chunkflow::engine::cuda {

class DeviceStateStore {
 public:
  DeviceStateStore(DeviceContext* ctx, int64_t layers, int64_t kv_dim, MemoryTracker* mem)
      : ctx_(ctx), layers_(layers), kv_dim_(kv_dim), mem_(mem) {}

  // Makes rows [0, rows) of `seq` exist at every layer (never shrinks).
  // Errors: RESOURCE_EXHAUSTED (over the memory budget) naming the sequence;
  // INVALID_ARGUMENT when rows exceed the length the sequence was first
  // grown with.
  absl::Status Grow(int64_t seq, int64_t rows, int64_t seq_length, bool grads);
  void Truncate(int64_t seq, int64_t rows);
  void Clear() { seqs_.clear(); }

  bool Has(int64_t seq) const { return seqs_.count(seq) > 0; }
  int64_t rows(int64_t seq) const;
  int64_t sequences() const { return static_cast<int64_t>(seqs_.size()); }

  float* k(int64_t seq, int64_t layer) { return Get(seq, layer).k.data(); }
  float* v(int64_t seq, int64_t layer) { return Get(seq, layer).v.data(); }
  float* dk(int64_t seq, int64_t layer) { return Get(seq, layer).dk.data(); }
  float* dv(int64_t seq, int64_t layer) { return Get(seq, layer).dv.data(); }

 private:
  struct Layer {
    DeviceArray<float> k, v, dk, dv;
  };
  struct Seq {
    int64_t rows = 0;
    int64_t capacity = 0;
    int64_t dirty_end = 0;  // rows >= dirty_end are still zero
    std::vector<Layer> layers;
  };
  Layer& Get(int64_t seq, int64_t layer) { return seqs_.at(seq).layers[layer]; }

  DeviceContext* ctx_;
  int64_t layers_;
  int64_t kv_dim_;
  MemoryTracker* mem_;
  std::map<int64_t, Seq> seqs_;
};

}  // namespace chunkflow::engine::cuda

#endif  // CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_STATE_STORE_H_
