#include "worker/engine/state_store.h"

namespace chunkflow::engine {

void StateStore::Resize(Seq& s, int64_t rows) {
  for (Layer& l : s.layers) {
    for (TrackedBuffer* b : {&l.k, &l.v, &l.dk, &l.dv}) b->Resize(rows * kv_dim_);
  }
  s.rows = rows;
}

void StateStore::Grow(int64_t seq, int64_t rows) {
  auto [it, inserted] = seqs_.try_emplace(seq);
  Seq& s = it->second;
  if (inserted) {
    for (int64_t l = 0; l < layers_; ++l) {
      Layer layer{TrackedBuffer(mem_, MemoryTracker::kState), TrackedBuffer(mem_, MemoryTracker::kState),
                  TrackedBuffer(mem_, MemoryTracker::kState), TrackedBuffer(mem_, MemoryTracker::kState)};
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
