#include "worker/engine/state_store.h"

#include <algorithm>

namespace chunkflow::engine {

void StateStore::Resize(Seq& s, int64_t rows) {
  for (Layer& l : s.layers) {
    l.k.Resize(rows * kv_dim_);
    l.v.Resize(rows * kv_dim_);
    if (s.grads) {
      l.dk.Resize(rows * kv_dim_);
      l.dv.Resize(rows * kv_dim_);
    }
  }
  s.rows = rows;
}

void StateStore::Grow(int64_t seq, int64_t rows, int64_t seq_length, bool grads) {
  auto [it, inserted] = seqs_.try_emplace(seq);
  Seq& s = it->second;
  if (inserted) {
    s.grads = grads;
    const int64_t reserve = std::max(rows, seq_length) * kv_dim_;
    for (int64_t l = 0; l < layers_; ++l) {
      Layer layer{TrackedBuffer(mem_, MemoryTracker::kState), TrackedBuffer(mem_, MemoryTracker::kState),
                  TrackedBuffer(mem_, MemoryTracker::kState), TrackedBuffer(mem_, MemoryTracker::kState)};
      layer.k.Reserve(reserve);
      layer.v.Reserve(reserve);
      if (grads) {
        layer.dk.Reserve(reserve);
        layer.dv.Reserve(reserve);
      }
      s.layers.push_back(std::move(layer));
    }
  }
  if (rows > s.rows) Resize(s, rows);
}

void StateStore::Truncate(int64_t seq, int64_t rows) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  if (rows <= 0) {
    seqs_.erase(it);
    return;
  }
  if (rows < it->second.rows) Resize(it->second, rows);
}

int64_t StateStore::rows(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.rows;
}

}  // namespace chunkflow::engine
