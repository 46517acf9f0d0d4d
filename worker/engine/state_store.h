// Per-sequence state of dependent chunks: for each layer of a stage, the K
// (after RoPE) and V of every position forwarded so far, and the gradients
// flowing back into them.
//
// Forward of a piece at [offset, offset + length) writes its K/V rows and
// attends to rows [0, offset + length). Backward runs from the last chunk to
// the first: a chunk's attention backward adds into dK/dV of all rows it
// read, so when chunk j's backward reaches a layer, the dK/dV of its own rows
// already hold every later chunk's contribution. After chunk j's backward its
// rows are no longer needed (earlier chunks never read them): Truncate frees
// them; the chain's first chunk frees the sequence.
//
//   StateStore store(layers, kv_dim, &mem);
//   store.Grow(seq, offset + length, seq_length, /*grads=*/true);  // new rows zero
//   float* k = store.k(seq, layer);          // (rows, kv_dim)
//   ...
//   store.Truncate(seq, offset);             // after the chunk's backward

#ifndef CHUNKFLOW_WORKER_ENGINE_STATE_STORE_H_
#define CHUNKFLOW_WORKER_ENGINE_STATE_STORE_H_

#include <cstdint>
#include <map>
#include <vector>

#include "worker/engine/memory.h"

namespace chunkflow::engine {

class StateStore {
 public:
  StateStore(int64_t layers, int64_t kv_dim, MemoryTracker* mem)
      : layers_(layers), kv_dim_(kv_dim), mem_(mem) {}

  // Makes rows [0, rows) of `seq` exist at every layer (never shrinks). The
  // first call allocates `seq_length` rows at once (the sequence's length),
  // so later chunks never reallocate; without `grads` (inference) no dK/dV.
  void Grow(int64_t seq, int64_t rows, int64_t seq_length, bool grads);
  // Drops rows >= rows of `seq` (their memory stays allocated until the
  // sequence is forgotten); rows == 0 forgets the sequence.
  void Truncate(int64_t seq, int64_t rows);
  void Clear() { seqs_.clear(); }

  bool Has(int64_t seq) const { return seqs_.count(seq) > 0; }
  int64_t rows(int64_t seq) const;
  int64_t sequences() const { return static_cast<int64_t>(seqs_.size()); }

  // (rows(seq), kv_dim) buffers of layer `layer` (0-based within the stage).
  float* k(int64_t seq, int64_t layer) { return Get(seq, layer).k.data(); }
  float* v(int64_t seq, int64_t layer) { return Get(seq, layer).v.data(); }
  float* dk(int64_t seq, int64_t layer) { return Get(seq, layer).dk.data(); }
  float* dv(int64_t seq, int64_t layer) { return Get(seq, layer).dv.data(); }

 private:
  struct Layer {
    TrackedBuffer k, v, dk, dv;
  };
  struct Seq {
    int64_t rows = 0;
    bool grads = true;
    std::vector<Layer> layers;
  };
  Layer& Get(int64_t seq, int64_t layer) { return seqs_.at(seq).layers[layer]; }
  void Resize(Seq& s, int64_t rows);

  int64_t layers_;
  int64_t kv_dim_;
  MemoryTracker* mem_;
  std::map<int64_t, Seq> seqs_;
};

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_STATE_STORE_H_
