// Byte accounting of the engine: what activations and the state store hold,
// as the peak a worker reports to the coordinator.
//
// The engine counts the bytes its fp32 buffers hold allocated (their
// capacity), not what malloc keeps around after a free: the number that
// follows ChunkSize and K, and the one the CUDA engine's caching allocator
// will report exactly.
//
//   MemoryTracker mem;
//   TrackedBuffer acts(&mem, MemoryTracker::kActivations);
//   acts.Resize(tokens * hidden);          // mem.current() grows
//   acts.Release();                        // and shrinks; mem.peak() stays

#ifndef CHUNKFLOW_WORKER_ENGINE_MEMORY_H_
#define CHUNKFLOW_WORKER_ENGINE_MEMORY_H_

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace chunkflow::engine {

class MemoryTracker {
 public:
  enum Kind { kActivations = 0, kState = 1, kScratch = 2, kNumKinds = 3 };

  void Add(Kind kind, int64_t bytes) {
    current_[kind] += bytes;
    total_ += bytes;
    peak_ = std::max(peak_, total_);
    for (int k = 0; k < kNumKinds; ++k) peak_by_kind_[k] = std::max(peak_by_kind_[k], current_[k]);
    working_high_water_ = std::max(working_high_water_, working());
  }
  int64_t current() const { return total_; }
  int64_t current(Kind kind) const { return current_[kind]; }
  // Peak of the sum of all kinds since the last ResetPeak.
  int64_t peak() const { return peak_; }
  // Peak of one kind alone (not necessarily reached at the same time as peak()).
  int64_t peak(Kind kind) const { return peak_by_kind_[kind]; }
  // Activations + scratch: everything but the state store.
  int64_t working() const { return total_ - current_[kState]; }
  // The most working() has been since construction (ResetPeak leaves it):
  // the CUDA stage keeps that much of the budget free of state when it
  // decides whether a new sequence's state goes on the device.
  int64_t working_high_water() const { return working_high_water_; }
  void ResetPeak() {
    peak_ = total_;
    peak_by_kind_ = current_;
  }

 private:
  std::array<int64_t, kNumKinds> current_{};
  std::array<int64_t, kNumKinds> peak_by_kind_{};
  int64_t total_ = 0;
  int64_t peak_ = 0;
  int64_t working_high_water_ = 0;
};

// An fp32 buffer whose size is counted by a tracker. Movable, not copyable.
class TrackedBuffer {
 public:
  TrackedBuffer() = default;
  TrackedBuffer(MemoryTracker* tracker, MemoryTracker::Kind kind) : tracker_(tracker), kind_(kind) {}
  TrackedBuffer(TrackedBuffer&& o) noexcept { *this = std::move(o); }
  TrackedBuffer& operator=(TrackedBuffer&& o) noexcept {
    if (this != &o) {
      Release();
      tracker_ = o.tracker_;
      kind_ = o.kind_;
      data_ = std::move(o.data_);
      o.data_.clear();
    }
    return *this;
  }
  TrackedBuffer(const TrackedBuffer&) = delete;
  TrackedBuffer& operator=(const TrackedBuffer&) = delete;
  ~TrackedBuffer() { Release(); }

  // New elements are zero. Shrinking keeps the allocation (capacity() is
  // what the tracker counts); Release() frees it.
  void Resize(int64_t n) {
    const int64_t before = capacity();
    data_.resize(static_cast<size_t>(n), 0.0f);
    Account(before);
  }
  // Allocates room for n elements without changing size().
  void Reserve(int64_t n) {
    const int64_t before = capacity();
    data_.reserve(static_cast<size_t>(n));
    Account(before);
  }
  void Release() {
    const int64_t before = capacity();
    std::vector<float>().swap(data_);
    Account(before);
  }
  void Zero() { std::fill(data_.begin(), data_.end(), 0.0f); }

  float* data() { return data_.data(); }
  const float* data() const { return data_.data(); }
  int64_t size() const { return static_cast<int64_t>(data_.size()); }
  int64_t capacity() const { return static_cast<int64_t>(data_.capacity()); }

 private:
  void Account(int64_t before) {
    if (tracker_) tracker_->Add(kind_, (capacity() - before) * static_cast<int64_t>(sizeof(float)));
  }

  MemoryTracker* tracker_ = nullptr;
  MemoryTracker::Kind kind_ = MemoryTracker::kScratch;
  std::vector<float> data_;
};

}  // namespace chunkflow::engine

#endif  // CHUNKFLOW_WORKER_ENGINE_MEMORY_H_
