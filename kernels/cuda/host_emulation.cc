// Host emulation of the CUDA runtime calls the CUDA engine and the kernels
// use, for tests on machines without a GPU. It is not a GPU simulator:
//  - "device" memory is host memory; cudaMalloc fills new blocks with 0xFF
//    bytes (NaN), so a buffer the engine forgets to zero or write poisons
//    the result;
//  - streams are synchronous, except for work a test library marks
//    asynchronous (host_emulation.h: the NCCL emulation's), which events,
//    cudaStreamQuery and cudaStreamSynchronize see;
//  - CHUNKFLOW_EMULATED_GPUS devices (default 1), the current one per thread;
//    cudaPointerGetAttributes knows cudaMalloc blocks (and their device) and
//    cudaHostAlloc blocks;
//  - cudaGetLastError returns what the SIMT emulation's last launch on this
//    thread failed with (simt.h), and cudaFuncSetAttribute keeps the
//    dynamic shared memory a kernel may use.
// The ops on top of it are either their CPU twins (cpu_twin_ops.cc, for the
// engine's host logic) or the real kernels run by the SIMT emulation
// (simt.h). Link it INSTEAD of the CUDA runtime (it defines the runtime
// functions it emulates).

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/host_emulation.h"

// ---------------------------------------------------------------------------
// Streams, events, devices and the allocation registry
// ---------------------------------------------------------------------------

namespace chunkflow::kernels::cuda::emulation {
namespace {

// Work of the emulated kernels runs at once; only work a test library marks
// asynchronous (EnqueueAsync, the NCCL emulation's) is pending on a stream.
struct EmuStream {
  int64_t enqueued = 0;
  int64_t completed = 0;
  int device = 0;
};

struct EmuEvent {
  EmuStream* stream = nullptr;
  int64_t ticket = 0;  // done when stream->completed reaches it
  // When it was recorded: the emulated kernels before it have run by then
  // (cudaEventElapsedTime).
  std::chrono::steady_clock::time_point recorded;
};

struct Registry {
  std::mutex mu;
  std::condition_variable changed;
  EmuStream default_stream;
  // cudaMalloc blocks: base -> (bytes, device).
  std::map<uintptr_t, std::pair<size_t, int>> device_blocks;
  std::set<uintptr_t> host_blocks;  // cudaHostAlloc
  // Asynchronous work pending per device, and the implicitly synchronising
  // calls made while some was (ImplicitSyncHazards).
  std::map<int, int64_t> pending;
  int64_t hazards = 0;
  std::string last_hazard;
};

Registry& R() {
  static Registry* r = new Registry;
  return *r;
}

thread_local int current_device = 0;
thread_local cudaError_t last_error = cudaSuccess;

// cudaFuncAttributeMaxDynamicSharedMemorySize per (device, kernel).
std::map<std::pair<int, const void*>, int>& SharedAttributes() {
  static auto* m = new std::map<std::pair<int, const void*>, int>;
  return *m;
}

// The legacy / per-thread default stream handles are one stream here.
EmuStream* StreamOf(cudaStream_t s) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(s);
  if (v <= 2) return &R().default_stream;
  return reinterpret_cast<EmuStream*>(s);
}

}  // namespace

int DeviceCount() {
  const char* env = std::getenv("CHUNKFLOW_EMULATED_GPUS");
  const int n = env != nullptr ? std::atoi(env) : 1;
  return n < 1 ? 1 : (n > 64 ? 64 : n);
}

int CurrentDevice() { return current_device; }

void SetLastError(cudaError_t e) { last_error = e; }

size_t MaxDynamicSharedBytes(const void* kernel) {
  std::lock_guard<std::mutex> lock(R().mu);
  auto it = SharedAttributes().find({current_device, kernel});
  return it == SharedAttributes().end() ? size_t{48} << 10 : static_cast<size_t>(it->second);
}

void EnqueueAsync(cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(R().mu);
  EmuStream* s = StreamOf(stream);
  ++s->enqueued;
  ++R().pending[s->device];
}

void CompleteAsync(cudaStream_t stream) {
  {
    std::lock_guard<std::mutex> lock(R().mu);
    EmuStream* s = StreamOf(stream);
    ++s->completed;
    --R().pending[s->device];
  }
  R().changed.notify_all();
}

int64_t ImplicitSyncHazards(std::string* last) {
  std::lock_guard<std::mutex> lock(R().mu);
  if (last != nullptr) *last = R().last_hazard;
  return R().hazards;
}

void ResetImplicitSyncHazards() {
  std::lock_guard<std::mutex> lock(R().mu);
  R().hazards = 0;
  R().last_hazard.clear();
}

namespace {

// A call that synchronises the device (or all its streams) made while
// asynchronous work is pending on the calling thread's current device.
void NoteImplicitSync(const char* call) {
  std::lock_guard<std::mutex> lock(R().mu);
  if (R().pending[current_device] <= 0) return;
  ++R().hazards;
  R().last_hazard = std::string(call) + " on device " + std::to_string(current_device);
}

}  // namespace

}  // namespace chunkflow::kernels::cuda::emulation

namespace emu = chunkflow::kernels::cuda::emulation;

// ---------------------------------------------------------------------------
// The CUDA runtime calls (CHUNKFLOW_EMULATED_GPUS devices, default 1)
// ---------------------------------------------------------------------------

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = emu::DeviceCount();
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  if (device < 0 || device >= emu::DeviceCount()) return cudaErrorInvalidDevice;
  emu::current_device = device;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = emu::current_device;
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return emu::last_error; }
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value > 227 * 1024) return cudaErrorInvalidValue;  // sm_90's maximum
  std::lock_guard<std::mutex> lock(emu::R().mu);
  emu::SharedAttributes()[{emu::current_device, func}] = value;
  return cudaSuccess;
}
// An H100 SXM's 132 multiprocessors: what the kernels are built and tuned for.
constexpr int kEmulatedMultiprocessors = 132;
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device < 0 || device >= emu::DeviceCount()) return cudaErrorInvalidDevice;
  std::memset(prop, 0, sizeof(*prop));
  std::strcpy(prop->name, "host emulation");
  prop->major = 9;  // what the kernels are built for
  prop->totalGlobalMem = size_t{1} << 34;
  prop->multiProcessorCount = kEmulatedMultiprocessors;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device < 0 || device >= emu::DeviceCount()) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = kEmulatedMultiprocessors; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    default: return cudaErrorInvalidValue;  // not emulated: a caller learns it at once
  }
}
// The names and texts of the errors the emulations return.
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaError (host emulation)";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure (see the emulation's message)";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "error (host emulation)";
  }
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  auto* s = new emu::EmuStream;
  s->device = emu::current_device;
  *stream = reinterpret_cast<cudaStream_t>(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  emu::EmuStream* s = emu::StreamOf(stream);
  std::unique_lock<std::mutex> lock(emu::R().mu);
  emu::R().changed.wait(lock, [&] { return s->completed >= s->enqueued; });
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t stream) {
  emu::EmuStream* s = emu::StreamOf(stream);
  std::lock_guard<std::mutex> lock(emu::R().mu);
  return s->completed >= s->enqueued ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaDeviceSynchronize(void) {
  emu::NoteImplicitSync("cudaDeviceSynchronize");
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (reinterpret_cast<uintptr_t>(stream) > 2) delete emu::StreamOf(stream);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new emu::EmuEvent);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  return cudaEventCreate(event);
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<emu::EmuEvent*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  auto* e = reinterpret_cast<emu::EmuEvent*>(event);
  std::lock_guard<std::mutex> lock(emu::R().mu);
  e->stream = emu::StreamOf(stream);
  e->ticket = e->stream->enqueued;
  e->recorded = std::chrono::steady_clock::now();
  return cudaSuccess;
}
// Host milliseconds between the two records (the emulation's, not a GPU's).
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  auto* a = reinterpret_cast<emu::EmuEvent*>(start);
  auto* b = reinterpret_cast<emu::EmuEvent*>(end);
  if (a->stream == nullptr || b->stream == nullptr) return cudaErrorInvalidResourceHandle;
  *ms = std::chrono::duration<float, std::milli>(b->recorded - a->recorded).count();
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  auto* e = reinterpret_cast<emu::EmuEvent*>(event);
  std::lock_guard<std::mutex> lock(emu::R().mu);
  return e->stream == nullptr || e->stream->completed >= e->ticket ? cudaSuccess
                                                                  : cudaErrorNotReady;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  auto* e = reinterpret_cast<emu::EmuEvent*>(event);
  std::unique_lock<std::mutex> lock(emu::R().mu);
  emu::R().changed.wait(lock,
                        [&] { return e->stream == nullptr || e->stream->completed >= e->ticket; });
  return cudaSuccess;
}
// The stream's later work runs at once here, so the host waits instead.
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned int) {
  return cudaEventSynchronize(event);
}

}  // extern "C"

namespace chunkflow::kernels::cuda::emulation {
namespace {

// A block of `bytes` and the guard after it: to the next multiple of 256,
// then kGuardBytes more (CheckDeviceGuards). The guard is 0xFE bytes, not
// the 0xFF poison: an fp32 accumulation of a NaN into 0xFFFFFFFF leaves it
// as it was, into 0xFEFEFEFE (-1.7e38) it does not.
constexpr size_t kGuardBytes = 256;
constexpr unsigned char kGuard = 0xFE;
size_t GuardedBytes(size_t bytes) {
  return (std::max<size_t>(bytes, 1) + 255) / 256 * 256 + kGuardBytes;
}

cudaError_t AllocateDevice(void** ptr, size_t bytes) {
  // 256-byte aligned, as cudaMalloc's blocks are (cuBLASLt relies on it).
  if (bytes > (size_t{1} << 48)) return cudaErrorMemoryAllocation;
  *ptr = std::aligned_alloc(256, GuardedBytes(bytes));
  if (*ptr == nullptr) return cudaErrorMemoryAllocation;
  std::memset(*ptr, 0xFF, bytes);  // NaN poison: unwritten memory shows
  std::memset(static_cast<unsigned char*>(*ptr) + bytes, kGuard, GuardedBytes(bytes) - bytes);
  std::lock_guard<std::mutex> lock(emu::R().mu);
  emu::R().device_blocks[reinterpret_cast<uintptr_t>(*ptr)] = {bytes == 0 ? 1 : bytes,
                                                               emu::current_device};
  return cudaSuccess;
}

// The first byte of the guard after a `bytes`-byte block at `base` that is
// not the guard any more (from the block's end), or -1; rewrites the guard.
int64_t BrokenGuard(uintptr_t base, size_t bytes) {
  auto* p = reinterpret_cast<unsigned char*>(base);
  const size_t end = GuardedBytes(bytes);
  for (size_t i = bytes; i < end; ++i) {
    if (p[i] == kGuard) continue;
    std::memset(p + bytes, kGuard, end - bytes);
    return static_cast<int64_t>(i - bytes);
  }
  return -1;
}

std::string Overrun(int64_t at, size_t bytes) {
  return "a write at byte " + std::to_string(at) + " after the end of a " +
         std::to_string(bytes) + "-byte cudaMalloc block";
}

cudaError_t FreeDevice(void* ptr) {
  int64_t broken = -1;
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(R().mu);
    auto it = R().device_blocks.find(reinterpret_cast<uintptr_t>(ptr));
    if (it != R().device_blocks.end()) {
      bytes = it->second.first;
      broken = BrokenGuard(it->first, bytes);
      R().device_blocks.erase(it);
    }
  }
  std::free(ptr);
  if (broken >= 0) {  // after the last grid's check: host code, or a grid since
    std::fprintf(stderr, "host emulation: cudaFree found %s\n", Overrun(broken, bytes).c_str());
    last_error = cudaErrorIllegalAddress;
  }
  return cudaSuccess;
}

}  // namespace

bool CheckDeviceGuards(std::string* what) {
  std::lock_guard<std::mutex> lock(R().mu);
  bool ok = true;
  for (const auto& [base, block] : R().device_blocks) {
    const int64_t at = BrokenGuard(base, block.first);
    if (at < 0) continue;
    if (ok && what != nullptr) *what = Overrun(at, block.first);
    ok = false;
  }
  return ok;
}

}  // namespace chunkflow::kernels::cuda::emulation

extern "C" {

// cudaMalloc / cudaFree and the pinned-host pair synchronise the device
// (CUDA's "implicit synchronization"); the stream-ordered pair does not.
cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  emu::NoteImplicitSync("cudaMalloc");
  return emu::AllocateDevice(ptr, bytes);
}
cudaError_t cudaMallocAsync(void** ptr, size_t bytes, cudaStream_t) {
  return emu::AllocateDevice(ptr, bytes);
}
// An 80 GiB device less the blocks allocated on it.
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  constexpr size_t kTotal = size_t{80} << 30;
  size_t used = 0;
  std::lock_guard<std::mutex> lock(emu::R().mu);
  for (const auto& [p, block] : emu::R().device_blocks) {
    if (block.second == emu::current_device) used += block.first;
  }
  *total_bytes = kTotal;
  *free_bytes = used < kTotal ? kTotal - used : 0;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int) {
  *pool = nullptr;
  return cudaSuccess;
}
cudaError_t cudaMemPoolTrimTo(cudaMemPool_t, size_t) { return cudaSuccess; }
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) { return emu::FreeDevice(ptr); }
cudaError_t cudaHostAlloc(void** ptr, size_t bytes, unsigned int) {
  emu::NoteImplicitSync("cudaHostAlloc");
  // Page-aligned, as pinned allocations are.
  if (bytes > (size_t{1} << 48)) return cudaErrorMemoryAllocation;
  *ptr = std::aligned_alloc(4096, (std::max<size_t>(bytes, 1) + 4095) / 4096 * 4096);
  if (*ptr == nullptr) return cudaErrorMemoryAllocation;
  std::memset(*ptr, 0xFF, bytes);
  std::lock_guard<std::mutex> lock(emu::R().mu);
  emu::R().host_blocks.insert(reinterpret_cast<uintptr_t>(*ptr));
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* ptr) {
  emu::NoteImplicitSync("cudaFreeHost");
  {
    std::lock_guard<std::mutex> lock(emu::R().mu);
    emu::R().host_blocks.erase(reinterpret_cast<uintptr_t>(ptr));
  }
  std::free(ptr);
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  emu::NoteImplicitSync("cudaFree");
  return emu::FreeDevice(ptr);
}
// Device memory: inside a cudaMalloc block (its device); host: a
// cudaHostAlloc block's base; anything else unregistered host memory.
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr) {
  std::memset(attr, 0, sizeof(*attr));
  attr->type = cudaMemoryTypeUnregistered;
  attr->device = -1;
  const uintptr_t p = reinterpret_cast<uintptr_t>(ptr);
  std::lock_guard<std::mutex> lock(emu::R().mu);
  auto it = emu::R().device_blocks.upper_bound(p);
  if (it != emu::R().device_blocks.begin()) {
    --it;
    if (p < it->first + it->second.first) {
      attr->type = cudaMemoryTypeDevice;
      attr->device = it->second.second;
      attr->devicePointer = const_cast<void*>(ptr);
      return cudaSuccess;
    }
  }
  if (emu::R().host_blocks.count(p) != 0) {
    attr->type = cudaMemoryTypeHost;
    attr->hostPointer = const_cast<void*>(ptr);
  }
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) {
  std::memset(dst, value, bytes);
  return cudaSuccess;
}

}  // extern "C"

