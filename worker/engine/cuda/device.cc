#include "worker/engine/cuda/device.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/status.h"

namespace chunkflow::engine::cuda {

using kernels::cuda::CudaCheck;

bool HaveCudaDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

absl::StatusOr<std::unique_ptr<DeviceContext>> DeviceContext::Create(int device,
                                                                     int64_t budget_bytes) {
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::UnavailableError(absl::StrCat(
        "no CUDA device: cudaGetDeviceCount: ",
        e == cudaSuccess ? "0 devices" : cudaGetErrorString(e)));
  }
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("CUDA device ", device, " does not exist (this machine has ", count, ")"));
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess && prop.major * 10 + prop.minor < 90) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA device ", device, " (", prop.name, ") has compute capability ", prop.major, ".",
        prop.minor, "; this build's kernels need 9.0 or newer (Hopper: sm_90 code, compute_90 PTX)"));
  }
  if (budget_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory budget must be >= 0 bytes, got ", budget_bytes));
  }
  std::unique_ptr<DeviceContext> ctx(new DeviceContext());
  ctx->device_ = device;
  ctx->budget_ = budget_bytes;
  if (absl::Status s = CudaCheck(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  if (absl::Status s =
          CudaCheck(cudaStreamCreateWithFlags(&ctx->stream_, cudaStreamNonBlocking),
                    "cudaStreamCreate");
      !s.ok()) {
    return s;
  }
  // Stream-ordered raw allocations: no device-wide synchronisation, ever.
  ctx->raw_ = kernels::cuda::CudaRawMemory(ctx->stream_);
  kernels::cuda::CachingAllocatorOptions opts;
  opts.budget_bytes = budget_bytes;
  ctx->alloc_ = std::make_unique<kernels::cuda::CachingAllocator>(ctx->raw_.get(), opts);
  // cuBLAS's and cuBLASLt's workspace from the allocator: counted in the
  // exact peak, and cuBLAS never allocates on its own mid-step.
  absl::StatusOr<void*> ws = ctx->alloc_->Allocate(kCublasWorkspaceBytes, "cuBLAS workspace");
  if (!ws.ok()) return ws.status();
  ctx->workspace_ = *ws;
  kernels::cuda::CublasOptions bo;
  bo.workspace = ctx->workspace_;
  bo.workspace_bytes = kCublasWorkspaceBytes;
  absl::StatusOr<kernels::cuda::CublasHandle> h =
      kernels::cuda::CublasHandle::Create(ctx->stream_, bo);
  if (!h.ok()) return h.status();
  ctx->blas_.emplace(std::move(*h));
  return ctx;
}

DeviceContext::~DeviceContext() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  blas_.reset();  // before its workspace goes
  if (workspace_ != nullptr) alloc_->Free(workspace_).IgnoreError();
  alloc_.reset();  // returns the cache before the stream goes
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

int64_t DeviceContext::AvailableBytes() {
  const int64_t in_use = alloc_->in_use();
  // The allocator's cached blocks are free for it; the device's free memory
  // now counts what other processes and libraries (NCCL) took since.
  int64_t available = alloc_->reserved() - in_use;
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaSetDevice(device_) == cudaSuccess &&
      cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
    available += static_cast<int64_t>(free_bytes);
  } else {
    (void)cudaGetLastError();
  }
  if (budget_ > 0) available = std::min(available, budget_ - in_use);
  return std::max<int64_t>(available, 0);
}

absl::Status DeviceContext::Activate() const {
  return CudaCheck(cudaSetDevice(device_), "cudaSetDevice");
}

absl::Status DeviceContext::Sync(const char* what) const {
  return kernels::cuda::CudaSync(stream_, what);
}

std::string DeviceContext::Lost() const {
  if (cudaSetDevice(device_) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess) return "";
  (void)cudaGetLastError();  // clears an ordinary error; a sticky one stays
  const cudaError_t again = cudaDeviceSynchronize();
  if (again == cudaSuccess) return "";
  return absl::StrCat(cudaGetErrorName(again), ": ", cudaGetErrorString(again));
}

absl::Status CopyToDevice(const DeviceContext& ctx, void* dst, const void* src, int64_t bytes,
                          const char* what) {
  if (bytes == 0) return absl::OkStatus();
  return CudaCheck(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice,
                                   ctx.stream()),
                   what);
}

absl::Status CopyToHost(const DeviceContext& ctx, void* dst, const void* src, int64_t bytes,
                        const char* what) {
  if (bytes == 0) return absl::OkStatus();
  if (absl::Status s = CudaCheck(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes),
                                                 cudaMemcpyDeviceToHost, ctx.stream()),
                                 what);
      !s.ok()) {
    return s;
  }
  return ctx.Sync(what);
}

absl::Status CopyOnDevice(const DeviceContext& ctx, void* dst, const void* src, int64_t bytes,
                          const char* what) {
  if (bytes == 0) return absl::OkStatus();
  return CudaCheck(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice,
                                   ctx.stream()),
                   what);
}

absl::Status ZeroOnDevice(const DeviceContext& ctx, void* dst, int64_t bytes, const char* what) {
  if (bytes == 0) return absl::OkStatus();
  return CudaCheck(cudaMemsetAsync(dst, 0, static_cast<size_t>(bytes), ctx.stream()), what);
}

}  // namespace chunkflow::engine::cuda
