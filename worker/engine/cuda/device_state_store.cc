#include "worker/engine/cuda/device_state_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace chunkflow::engine::cuda {

absl::Status DeviceStateStore::Grow(int64_t seq, int64_t rows, int64_t seq_length, bool grads) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) {
    Seq s;
    s.capacity = std::max(rows, seq_length);
    const int64_t n = s.capacity * kv_dim_;
    const std::string what = absl::StrCat("state store K/V of sequence ", seq, " (",
                                          s.capacity, " rows x ", layers_, " layers)");
    for (int64_t l = 0; l < layers_; ++l) {
      Layer layer;
      for (DeviceArray<float>* a : {&layer.k, &layer.v}) {
        if (absl::Status st = a->AllocateZeroed(ctx_, mem_, MemoryTracker::kState, n, what);
            !st.ok()) {
          return st;
        }
      }
      if (grads) {
        for (DeviceArray<float>* a : {&layer.dk, &layer.dv}) {
          if (absl::Status st = a->AllocateZeroed(ctx_, mem_, MemoryTracker::kState, n, what);
              !st.ok()) {
            return st;
          }
        }
      }
      s.layers.push_back(std::move(layer));
    }
    it = seqs_.emplace(seq, std::move(s)).first;
  }
  Seq& s = it->second;
  if (rows > s.capacity) {
    return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, " needs ", rows,
                                                   " rows of state, it was grown for ",
                                                   s.capacity));
  }
  if (rows > s.rows) {
    // Rows dropped by an earlier Truncate come back zero, as on the CPU.
    const int64_t dirty = std::min(rows, s.dirty_end) - s.rows;
    const int64_t bytes = std::max<int64_t>(dirty, 0) * kv_dim_ * static_cast<int64_t>(sizeof(float));
    for (Layer& l : s.layers) {
      if (bytes == 0) break;
      for (DeviceArray<float>* a : {&l.k, &l.v, &l.dk, &l.dv}) {
        if (a->empty()) continue;
        if (absl::Status st = ZeroOnDevice(*ctx_, a->data() + s.rows * kv_dim_, bytes,
                                           "zero regrown state rows");
            !st.ok()) {
          return st;
        }
      }
    }
    s.rows = rows;
    s.dirty_end = std::max(s.dirty_end, rows);
  }
  return absl::OkStatus();
}

void DeviceStateStore::Truncate(int64_t seq, int64_t rows) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  if (rows <= 0) {
    seqs_.erase(it);
    return;
  }
  it->second.rows = std::min(it->second.rows, rows);
}

int64_t DeviceStateStore::rows(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.rows;
}

}  // namespace chunkflow::engine::cuda
