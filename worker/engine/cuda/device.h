// The device side of the CUDA engine: one context per process (its device,
// one stream every kernel of the engine runs on, the cuBLAS handle bound to
// it, the caching allocator that holds the job's memory budget, and the
// 32 MiB cuBLAS workspace taken from it) and RAII device arrays allocated
// from it.
//
// Every array is also counted in a MemoryTracker by kind (activations, state,
// scratch), with the same sizes the CPU engine's buffers have, so the two
// engines' per-kind peaks compare directly; the allocator's exact peak of
// everything on the device (parameters, gradients and optimizer state
// included) is the number a worker reports.
//
// Ordering: all work is on the context's one stream, so an array freed while
// a kernel that reads it is still queued is safe to hand out again (the next
// user's kernels queue behind it), as in PyTorch's caching allocator.
//
//   absl::StatusOr<std::unique_ptr<DeviceContext>> ctx = DeviceContext::Create(0, budget);
//   DeviceArray<float> x;
//   RETURN_IF_ERROR(x.Allocate(ctx->get(), &tracker, MemoryTracker::kScratch, n, "x"));
//   RETURN_IF_ERROR(x.Upload(host.data(), n));

#ifndef CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_H_
#define CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/allocator.h"
#include "kernels/cuda/linear.h"
#include "worker/engine/memory.h"

// Returns the status of `expr` from the enclosing function when it is not OK
// (the CUDA engine and the step runner chain many device calls).
#ifndef CF_RETURN_IF_ERROR
#define CF_RETURN_IF_ERROR(expr)              \
  do {                                        \
    if (absl::Status s_ = (expr); !s_.ok()) { \
      return s_;                              \
    }                                         \
  } while (false)
#endif

namespace chunkflow::engine::cuda {

// True when the CUDA runtime sees at least one device.
bool HaveCudaDevice();

class DeviceContext {
 public:
  // budget_bytes: the allocator's limit (0: the device's memory).
  // Errors: UNAVAILABLE (no CUDA device `device` or no driver);
  // FAILED_PRECONDITION (compute capability below 9.0: the kernels are built
  // for Hopper); INTERNAL naming the failed call.
  static absl::StatusOr<std::unique_ptr<DeviceContext>> Create(int device, int64_t budget_bytes);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  const kernels::cuda::CublasHandle& blas() const { return *blas_; }
  kernels::cuda::CachingAllocator& allocator() { return *alloc_; }
  // Bytes a new allocation can have now: what the budget leaves beyond the
  // allocator's bytes in use, and at most its cached blocks plus the
  // device's free memory (cudaMemGetInfo: other processes and libraries
  // count). Not a promise (the cache's best fit may hand out up to twice a
  // request).
  int64_t AvailableBytes();

  // Makes this context's device current on the calling thread (CUDA's current
  // device is per thread).
  absl::Status Activate() const;
  // Waits for the stream; reports any fault of the work queued on it.
  absl::Status Sync(const char* what) const;
  // After a failed op: whether the device is unusable for this process (a
  // kernel fault such as an illegal address leaves a "sticky" error that
  // every later CUDA call returns; only a new process recovers). Waits for
  // the whole device. The error's text when lost, empty otherwise.
  std::string Lost() const;

 private:
  DeviceContext() = default;
  // cuBLAS / cuBLASLt workspace (NVIDIA's recommendation for Hopper).
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

  int device_ = 0;
  int64_t budget_ = 0;
  void* workspace_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<kernels::cuda::RawDeviceMemory> raw_;
  std::unique_ptr<kernels::cuda::CachingAllocator> alloc_;
  std::optional<kernels::cuda::CublasHandle> blas_;
};

// n elements of T on the device, from a context's allocator, counted in a
// tracker. Movable, not copyable; the context must outlive it.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  DeviceArray(DeviceArray&& o) noexcept { *this = std::move(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    if (this != &o) {
      Release();
      ctx_ = o.ctx_;
      mem_ = o.mem_;
      kind_ = o.kind_;
      ptr_ = o.ptr_;
      n_ = o.n_;
      o.ptr_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { Release(); }

  // Replaces the contents with n uninitialised elements. Errors:
  // RESOURCE_EXHAUSTED naming `what` (over the budget or the device).
  absl::Status Allocate(DeviceContext* ctx, MemoryTracker* mem, MemoryTracker::Kind kind, int64_t n,
                        std::string_view what) {
    Release();
    absl::StatusOr<void*> p =
        ctx->allocator().Allocate(static_cast<size_t>(n) * sizeof(T), what);
    if (!p.ok()) return p.status();
    ctx_ = ctx;
    mem_ = mem;
    kind_ = kind;
    ptr_ = static_cast<T*>(*p);
    n_ = n;
    if (mem_ != nullptr) mem_->Add(kind_, bytes());
    return absl::OkStatus();
  }
  // Allocate, then zero (queued on the stream).
  absl::Status AllocateZeroed(DeviceContext* ctx, MemoryTracker* mem, MemoryTracker::Kind kind,
                              int64_t n, std::string_view what);
  void Release() {
    if (ptr_ == nullptr) return;
    if (mem_ != nullptr) mem_->Add(kind_, -bytes());
    ctx_->allocator().Free(ptr_).IgnoreError();  // ours: cannot be foreign or double
    ptr_ = nullptr;
    n_ = 0;
  }
  // Host <-> device copies of the first n elements (queued on the stream;
  // Download waits for it).
  absl::Status Upload(const T* host, int64_t n);
  absl::Status Download(T* host, int64_t n) const;

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  int64_t size() const { return n_; }
  bool empty() const { return ptr_ == nullptr; }

 private:
  int64_t bytes() const { return n_ * static_cast<int64_t>(sizeof(T)); }
  DeviceContext* ctx_ = nullptr;
  MemoryTracker* mem_ = nullptr;
  MemoryTracker::Kind kind_ = MemoryTracker::kScratch;
  T* ptr_ = nullptr;
  int64_t n_ = 0;
};

// Queued copies on the context's stream; CopyToHost waits. Errors: INTERNAL
// naming `what`.
absl::Status CopyToDevice(const DeviceContext& ctx, void* dst, const void* src, int64_t bytes,
                          const char* what);
absl::Status CopyToHost(const DeviceContext& ctx, void* dst, const void* src, int64_t bytes,
                        const char* what);
absl::Status CopyOnDevice(const DeviceContext& ctx, void* dst, const void* src, int64_t bytes,
                          const char* what);
absl::Status ZeroOnDevice(const DeviceContext& ctx, void* dst, int64_t bytes, const char* what);

template <typename T>
absl::Status DeviceArray<T>::AllocateZeroed(DeviceContext* ctx, MemoryTracker* mem,
                                            MemoryTracker::Kind kind, int64_t n,
                                            std::string_view what) {
  if (absl::Status s = Allocate(ctx, mem, kind, n, what); !s.ok()) return s;
  return ZeroOnDevice(*ctx, ptr_, bytes(), "zero a new device array");
}

template <typename T>
absl::Status DeviceArray<T>::Upload(const T* host, int64_t n) {
  return CopyToDevice(*ctx_, ptr_, host, n * static_cast<int64_t>(sizeof(T)), "upload");
}

template <typename T>
absl::Status DeviceArray<T>::Download(T* host, int64_t n) const {
  return CopyToHost(*ctx_, host, ptr_, n * static_cast<int64_t>(sizeof(T)), "download");
}

}  // namespace chunkflow::engine::cuda

#endif  // CHUNKFLOW_WORKER_ENGINE_CUDA_DEVICE_H_
