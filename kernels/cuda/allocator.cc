#include "kernels/cuda/allocator.h"

#include <cuda_runtime_api.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace chunkflow::kernels::cuda {
namespace {

std::string MiB(int64_t bytes) {
  return absl::StrFormat("%.1f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
}

class CudaRaw final : public RawDeviceMemory {
 public:
  explicit CudaRaw(cudaStream_t stream) : stream_(stream) {}
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e =
        stream_ != nullptr ? cudaMallocAsync(&p, bytes, stream_) : cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();  // clear the sticky-free error state
      return absl::ResourceExhaustedError(absl::StrCat(
          stream_ != nullptr ? "cudaMallocAsync(" : "cudaMalloc(", bytes, "): ",
          cudaGetErrorString(e)));
    }
    return p;
  }
  void Free(void* ptr) override {
    if (stream_ != nullptr) {
      cudaFreeAsync(ptr, stream_);
    } else {
      cudaFree(ptr);
    }
  }
  // cudaFreeAsync returns memory to the device's pool, which keeps it; after
  // the stream has run the frees, trim the pool so a differently shaped
  // request can have it. A stream wait, not a device-wide one.
  void Trim() override {
    if (stream_ == nullptr) return;
    int device = 0;
    cudaMemPool_t pool;
    if (cudaStreamSynchronize(stream_) != cudaSuccess || cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess) {
      (void)cudaGetLastError();
      return;
    }
    cudaMemPoolTrimTo(pool, 0);
  }

 private:
  cudaStream_t stream_;
};

}  // namespace

std::unique_ptr<RawDeviceMemory> CudaRawMemory(cudaStream_t stream) {
  return std::make_unique<CudaRaw>(stream);
}

CachingAllocator::CachingAllocator(RawDeviceMemory* raw, const CachingAllocatorOptions& options)
    : raw_(raw), options_(options) {}

CachingAllocator::~CachingAllocator() {
  absl::MutexLock lock(&mu_);
  EmptyCacheLocked();
}

absl::StatusOr<void*> CachingAllocator::Allocate(size_t bytes, std::string_view what) {
  const int64_t round = std::max<int64_t>(1, options_.round_bytes);
  const int64_t size =
      std::max<int64_t>(round, (static_cast<int64_t>(bytes) + round - 1) / round * round);
  absl::MutexLock lock(&mu_);
  // Best fit among cached blocks, at most twice the request.
  auto it = cached_.lower_bound(size);
  if (it != cached_.end() && it->first <= 2 * size) {
    const int64_t block = it->first;
    void* p = it->second;
    cached_.erase(it);
    cached_bytes_ -= block;
    live_[p] = block;
    in_use_ += block;
    peak_in_use_ = std::max(peak_in_use_, in_use_);
    return p;
  }
  auto refuse = [&](const std::string& why) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", MiB(size), " for ", std::string(what), ": ", why, " (in use ", MiB(in_use_),
        ", cached ", MiB(cached_bytes_),
        options_.budget_bytes > 0 ? absl::StrCat(", budget ", MiB(options_.budget_bytes)) : "",
        ")"));
  };
  if (options_.budget_bytes > 0 && in_use_ + cached_bytes_ + size > options_.budget_bytes) {
    EmptyCacheLocked();
    if (in_use_ + size > options_.budget_bytes) return refuse("over the memory budget");
  }
  absl::StatusOr<void*> p = raw_->Allocate(static_cast<size_t>(size));
  if (!p.ok() && !cached_.empty()) {
    EmptyCacheLocked();
    raw_->Trim();
    p = raw_->Allocate(static_cast<size_t>(size));
  }
  if (!p.ok()) return refuse(std::string(p.status().message()));
  ++raw_allocations_;
  live_[*p] = size;
  in_use_ += size;
  peak_in_use_ = std::max(peak_in_use_, in_use_);
  peak_reserved_ = std::max(peak_reserved_, in_use_ + cached_bytes_);
  return *p;
}

absl::Status CachingAllocator::Free(void* ptr) {
  if (ptr == nullptr) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Free of ", absl::StrFormat("%p", ptr),
                     ", which this allocator did not hand out (or was freed already)"));
  }
  const int64_t size = it->second;
  live_.erase(it);
  in_use_ -= size;
  cached_.emplace(size, ptr);
  cached_bytes_ += size;
  return absl::OkStatus();
}

void CachingAllocator::EmptyCache() {
  absl::MutexLock lock(&mu_);
  EmptyCacheLocked();
}

void CachingAllocator::EmptyCacheLocked() {
  for (auto& [size, p] : cached_) raw_->Free(p);
  cached_.clear();
  cached_bytes_ = 0;
}

absl::StatusOr<int64_t> CachingAllocator::BlockSize(const void* ptr) const {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(const_cast<void*>(ptr));
  if (it == live_.end()) return absl::InvalidArgumentError("not a live allocation");
  return it->second;
}

int64_t CachingAllocator::in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}
int64_t CachingAllocator::peak_in_use() const {
  absl::MutexLock lock(&mu_);
  return peak_in_use_;
}
int64_t CachingAllocator::reserved() const {
  absl::MutexLock lock(&mu_);
  return in_use_ + cached_bytes_;
}
int64_t CachingAllocator::peak_reserved() const {
  absl::MutexLock lock(&mu_);
  return peak_reserved_;
}
int64_t CachingAllocator::raw_allocations() const {
  absl::MutexLock lock(&mu_);
  return raw_allocations_;
}
void CachingAllocator::ResetPeak() {
  absl::MutexLock lock(&mu_);
  peak_in_use_ = in_use_;
  peak_reserved_ = in_use_ + cached_bytes_;
}

}  // namespace chunkflow::kernels::cuda
