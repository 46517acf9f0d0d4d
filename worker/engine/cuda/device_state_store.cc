#include "worker/engine/cuda/device_state_store.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/status.h"

namespace chunkflow::engine::cuda {

namespace {
constexpr int64_t kF = static_cast<int64_t>(sizeof(float));
}  // namespace

const char* StateOffloadName(StateOffload mode) {
  switch (mode) {
    case StateOffload::kNever:
      return "never";
    case StateOffload::kAlways:
      return "always";
    case StateOffload::kAuto:
      return "auto";
  }
  return "?";
}

absl::StatusOr<StateOffload> ParseStateOffload(absl::string_view name) {
  for (StateOffload m : {StateOffload::kNever, StateOffload::kAlways, StateOffload::kAuto}) {
    if (name == StateOffloadName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("state offload must be never, always or auto, got \"", name, "\""));
}

DeviceStateStore::~DeviceStateStore() {
  Clear();
  for (auto& [n, p] : pinned_cache_) cudaFreeHost(p);
}

absl::Status DeviceStateStore::TakePinned(int64_t seq, int64_t n, HostArray* out) {
  n = std::max<int64_t>(n, 1);
  // The smallest cached buffer that fits, if it is at most twice the need.
  auto it = pinned_cache_.lower_bound(n);
  if (it != pinned_cache_.end() && it->first <= 2 * n) {
    out->p = it->second;
    out->n = it->first;
    pinned_cache_.erase(it);
  } else {
    void* p = nullptr;
    if (cudaHostAlloc(&p, static_cast<size_t>(n) * sizeof(float), cudaHostAllocDefault) !=
        cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot pin ", n * kF, " bytes of host memory for the offloaded state of sequence ",
          seq));
    }
    out->p = static_cast<float*>(p);
    out->n = n;
    pinned_mid_step_bytes_ += n * kF;
  }
  std::memset(out->p, 0, static_cast<size_t>(out->n) * sizeof(float));
  return absl::OkStatus();
}

void DeviceStateStore::DropPinned(Seq& s) {
  bool synced = false;
  for (Layer& l : s.layers) {
    for (HostArray* h : {&l.hk, &l.hv, &l.hdk, &l.hdv}) {
      if (h->p == nullptr) continue;
      if (!synced) {
        ctx_->Sync("return offloaded state buffers").IgnoreError();
        synced = true;
      }
      pinned_cache_.emplace(h->n, h->p);
      *h = HostArray();
    }
  }
}

int64_t DeviceStateStore::StateBytes(int64_t capacity, bool grads) const {
  return capacity * kv_dim_ * kF * (grads ? 4 : 2) * layers_;
}

int64_t DeviceStateStore::ReservePinned(const std::vector<int64_t>& capacities, bool grads) {
  // Every buffer the sequences will take (TakePinned: the smallest cached
  // one of at least n floats and at most 2n), largest first, matched
  // against the cache as TakePinned would; the rest pinned now.
  std::vector<int64_t> needs;
  for (int64_t capacity : capacities) {
    const int64_t n = std::max<int64_t>(capacity * kv_dim_, 1);
    for (int64_t i = 0; i < layers_ * (grads ? 4 : 2); ++i) needs.push_back(n);
  }
  std::sort(needs.rbegin(), needs.rend());
  std::multiset<int64_t> free_sizes;
  for (const auto& [n, p] : pinned_cache_) free_sizes.insert(n);
  int64_t pinned = 0;
  for (int64_t n : needs) {
    auto it = free_sizes.lower_bound(n);
    if (it != free_sizes.end() && *it <= 2 * n) {
      free_sizes.erase(it);
      continue;
    }
    void* p = nullptr;
    if (cudaHostAlloc(&p, static_cast<size_t>(n) * sizeof(float), cudaHostAllocDefault) !=
        cudaSuccess) {
      cudaGetLastError();
      break;  // Grow pins (or places on the device) what is missing
    }
    pinned_cache_.emplace(n, static_cast<float*>(p));
    pinned += n * kF;
  }
  return pinned;
}

int64_t DeviceStateStore::LargestOffloadedWindowBytes() const {
  int64_t most = 0;
  for (const auto& [seq, s] : seqs_) {
    if (s.offloaded) most = std::max(most, WindowBytes(s.capacity, s.grads));
  }
  return most;
}

absl::Status DeviceStateStore::NewLayer(int64_t seq, const Seq& s, Layer* layer) {
  const int64_t n = s.capacity * kv_dim_;
  const bool grads = s.grads;
  if (!s.offloaded) {
    const std::string what = absl::StrCat("state store K/V of sequence ", seq, " (", s.capacity,
                                          " rows x ", layers_, " layers)");
    for (DeviceArray<float>* a : {&layer->k, &layer->v, &layer->dk, &layer->dv}) {
      if (!grads && (a == &layer->dk || a == &layer->dv)) continue;
      if (absl::Status st = a->AllocateZeroed(ctx_, mem_, MemoryTracker::kState, n, what);
          !st.ok()) {
        return st;
      }
    }
    return absl::OkStatus();
  }
  for (HostArray* h : {&layer->hk, &layer->hv, &layer->hdk, &layer->hdv}) {
    if (!grads && (h == &layer->hdk || h == &layer->hdv)) continue;
    if (absl::Status st = TakePinned(seq, n, h); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status DeviceStateStore::AllocateLayers(int64_t seq, Seq& s) {
  s.layers.clear();
  for (int64_t l = 0; l < layers_; ++l) {
    Layer layer;
    absl::Status st = NewLayer(seq, s, &layer);
    s.layers.push_back(std::move(layer));
    if (!st.ok()) {
      DropPinned(s);
      s.layers.clear();  // device arrays back to the allocator
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status DeviceStateStore::Grow(int64_t seq, int64_t rows, int64_t seq_length, bool grads,
                                    int64_t headroom_bytes) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) {
    Seq s;
    s.capacity = std::max(rows, seq_length);
    s.grads = grads;
    s.offloaded = mode_ == StateOffload::kAlways;
    const bool automatic = mode_ == StateOffload::kAuto;
    int64_t in_use = 0, room = 0;
    if (automatic) {
      // Kept free: the caller's headroom and the largest window an
      // offloaded sequence brings onto the device.
      in_use = ctx_->allocator().in_use();
      room = ctx_->AvailableBytes() - std::max<int64_t>(headroom_bytes, 0) -
             LargestOffloadedWindowBytes();
      s.offloaded = StateBytes(s.capacity, grads) > room;
    }
    absl::Status st = AllocateLayers(seq, s);
    if (automatic && st.ok() && !s.offloaded && ctx_->allocator().in_use() - in_use > room) {
      // The cache's best fit handed out larger blocks than asked for: over
      // the room after all.
      s.offloaded = true;
      st = AllocateLayers(seq, s);
    } else if (automatic && absl::IsResourceExhausted(st)) {
      // The device ran out (the headroom is an estimate), or host memory
      // could not be pinned: the other place takes it.
      s.offloaded = !s.offloaded;
      st = AllocateLayers(seq, s);
    }
    if (!st.ok()) return st;
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
    const int64_t dirty = std::max<int64_t>(std::min(rows, s.dirty_end) - s.rows, 0);
    const int64_t bytes = dirty * kv_dim_ * kF;
    if (bytes > 0 && s.offloaded) {
      // Host writes: first let queued copies into these buffers finish.
      if (absl::Status st = ctx_->Sync("regrow offloaded state"); !st.ok()) return st;
    }
    for (Layer& l : s.layers) {
      if (bytes == 0) break;
      if (s.offloaded) {
        for (HostArray* h : {&l.hk, &l.hv, &l.hdk, &l.hdv}) {
          if (h->p != nullptr) std::memset(h->p + s.rows * kv_dim_, 0, static_cast<size_t>(bytes));
        }
        continue;
      }
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

absl::Status DeviceStateStore::Acquire(int64_t seq, int64_t layer, int64_t kv_rows, bool grads) {
  auto it = seqs_.find(seq);
  if (it != seqs_.end() && !it->second.offloaded) return absl::OkStatus();
  if (it == seqs_.end() && mode_ == StateOffload::kNever) return absl::OkStatus();
  if (it == seqs_.end() || it->second.layers[layer].acquired) {
    return absl::FailedPreconditionError(absl::StrCat(
        "state of sequence ", seq, " layer ", layer,
        it == seqs_.end() ? " does not exist" : " is already on the device"));
  }
  Seq& s = it->second;
  Layer& l = s.layers[layer];
  const int64_t n = std::max<int64_t>(s.rows, 1) * kv_dim_;
  const std::string what = absl::StrCat("offloaded state window of sequence ", seq, " layer ",
                                        layer, " (", s.rows, " rows)");
  kv_rows = std::clamp<int64_t>(kv_rows, 0, s.rows);
  l.acquired = true;  // from here on, Discard undoes a partial acquisition
  for (auto [dev, host] : {std::pair{&l.k, &l.hk}, std::pair{&l.v, &l.hv},
                           std::pair{&l.dk, &l.hdk}, std::pair{&l.dv, &l.hdv}}) {
    const bool grad = dev == &l.dk || dev == &l.dv;
    if (host->p == nullptr || (grad && !grads)) continue;
    if (absl::Status st = dev->Allocate(ctx_, mem_, MemoryTracker::kState, n, what); !st.ok()) {
      return st;
    }
    const int64_t rows = grad ? s.rows : kv_rows;
    if (absl::Status st = CopyToDevice(*ctx_, dev->data(), host->p, rows * kv_dim_ * kF,
                                       "state to the device");
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status DeviceStateStore::Release(int64_t seq, int64_t layer,
                                       std::pair<int64_t, int64_t> kv_rows, int64_t grads_end) {
  auto it = seqs_.find(seq);
  if (it != seqs_.end() && !it->second.offloaded) return absl::OkStatus();
  if (it == seqs_.end() && mode_ == StateOffload::kNever) return absl::OkStatus();
  if (it == seqs_.end() || !it->second.layers[layer].acquired) {
    return absl::FailedPreconditionError(
        absl::StrCat("state of sequence ", seq, " layer ", layer, " is not on the device"));
  }
  Layer& l = it->second.layers[layer];
  // Device-to-host copies into pinned memory, queued on the stream: the next
  // Acquire's host-to-device copies queue behind them.
  auto back = [&](DeviceArray<float>& dev, HostArray& host, int64_t begin, int64_t end) {
    if (host.p == nullptr || dev.empty() || end <= begin) return absl::OkStatus();
    return kernels::cuda::CudaCheck(
        cudaMemcpyAsync(host.p + begin * kv_dim_, dev.data() + begin * kv_dim_,
                        static_cast<size_t>((end - begin) * kv_dim_ * kF), cudaMemcpyDeviceToHost,
                        ctx_->stream()),
        "state to the host");
  };
  for (absl::Status st : {back(l.k, l.hk, kv_rows.first, kv_rows.second),
                          back(l.v, l.hv, kv_rows.first, kv_rows.second),
                          back(l.dk, l.hdk, 0, grads_end), back(l.dv, l.hdv, 0, grads_end)}) {
    if (!st.ok()) return st;
  }
  for (DeviceArray<float>* a : {&l.k, &l.v, &l.dk, &l.dv}) a->Release();
  l.acquired = false;
  return absl::OkStatus();
}

void DeviceStateStore::Discard(int64_t seq, int64_t layer) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end() || !it->second.offloaded) return;
  Layer& l = it->second.layers[layer];
  for (DeviceArray<float>* a : {&l.k, &l.v, &l.dk, &l.dv}) a->Release();
  l.acquired = false;
}

void DeviceStateStore::Truncate(int64_t seq, int64_t rows) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  if (rows <= 0) {
    DropPinned(it->second);
    seqs_.erase(it);
    return;
  }
  it->second.rows = std::min(it->second.rows, rows);
}

void DeviceStateStore::Clear() {
  for (auto& [seq, s] : seqs_) DropPinned(s);
  seqs_.clear();
  pinned_mid_step_bytes_ = 0;
}

bool DeviceStateStore::offloaded(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it != seqs_.end() && it->second.offloaded;
}

int64_t DeviceStateStore::offloaded_sequences() const {
  int64_t n = 0;
  for (const auto& [seq, s] : seqs_) n += s.offloaded ? 1 : 0;
  return n;
}

int64_t DeviceStateStore::rows(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.rows;
}

}  // namespace chunkflow::engine::cuda
