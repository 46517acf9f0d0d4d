// Device memory for the CUDA engine: a caching allocator over cudaMalloc with
// exact accounting. cudaMalloc / cudaFree synchronise the device and cost tens
// of microseconds, so freed blocks are kept and reused (best fit among the
// free blocks no more than twice the request); the bytes in use - the blocks
// live allocations hold - are tracked exactly, and their peak is the number a
// worker reports to the coordinator.
//
// The raw memory source is an interface so the bookkeeping is tested on any
// machine (allocator_test uses host memory); CudaRawMemory is the real one.
//
//   std::unique_ptr<RawDeviceMemory> raw = CudaRawMemory();
//   CachingAllocator alloc(raw.get(), {.budget_bytes = 70LL << 30});
//   absl::StatusOr<void*> p = alloc.Allocate(n * sizeof(float), "layer 3 K");
//   ...
//   alloc.Free(*p);
//   alloc.peak_in_use();                         // exact, bytes

#ifndef CHUNKFLOW_KERNELS_CUDA_ALLOCATOR_H_
#define CHUNKFLOW_KERNELS_CUDA_ALLOCATOR_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace chunkflow::kernels::cuda {

class RawDeviceMemory {
 public:
  virtual ~RawDeviceMemory() = default;
  // Errors: RESOURCE_EXHAUSTED when the device has no such block.
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  // Gives freed memory back to the device for good (a stream-ordered pool
  // keeps it until asked); called before the allocator retries a failure.
  virtual void Trim() {}
};

// cudaMalloc / cudaFree on the current device; with a stream, the
// stream-ordered cudaMallocAsync / cudaFreeAsync on it instead, which never
// synchronise the device (a device-wide wait while a NCCL kernel waits for a
// peer is how concurrent communicators deadlock; cudaFree is one).
std::unique_ptr<RawDeviceMemory> CudaRawMemory(cudaStream_t stream = nullptr);

struct CachingAllocatorOptions {
  // Refuse to hold more than this (in use + cached); 0: no limit but the
  // device's. The memory budget of the job, so an over-budget step fails here
  // with a clear error instead of deep inside CUDA.
  int64_t budget_bytes = 0;
  // Requests are rounded up to a multiple of this (alignment and reuse).
  int64_t round_bytes = 512;
};

class CachingAllocator {
 public:
  CachingAllocator(RawDeviceMemory* raw, const CachingAllocatorOptions& options);
  ~CachingAllocator();  // returns every cached block; live ones are a leak (logged by the caller)
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A block of at least `bytes` (0 gives a minimal block). Reuses a cached
  // block when one fits; otherwise asks the raw source, and on failure
  // empties the cache and asks once more. Errors: RESOURCE_EXHAUSTED naming
  // `what`, the request and the allocator's state (in use, cached, budget).
  absl::StatusOr<void*> Allocate(size_t bytes, std::string_view what);

  // Returns a block to the cache. Errors: INVALID_ARGUMENT for a pointer this
  // allocator did not hand out (or freed twice); nullptr is OK.
  absl::Status Free(void* ptr);

  // Returns every cached block to the raw source.
  void EmptyCache();

  // The block behind a live allocation: its rounded request, or a cached
  // block of up to twice that. Errors: INVALID_ARGUMENT (not live).
  absl::StatusOr<int64_t> BlockSize(const void* ptr) const;

  int64_t in_use() const;         // bytes of the blocks of live allocations
  int64_t peak_in_use() const;    // max of in_use() since construction / ResetPeak
  int64_t reserved() const;       // in use + cached
  int64_t peak_reserved() const;
  int64_t raw_allocations() const;  // calls that reached the raw source
  void ResetPeak();

 private:
  void EmptyCacheLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  RawDeviceMemory* const raw_;
  const CachingAllocatorOptions options_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<void*, int64_t> live_ ABSL_GUARDED_BY(mu_);  // block -> size
  std::multimap<int64_t, void*> cached_ ABSL_GUARDED_BY(mu_);      // size -> block
  int64_t in_use_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t cached_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t peak_in_use_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t peak_reserved_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t raw_allocations_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_ALLOCATOR_H_
