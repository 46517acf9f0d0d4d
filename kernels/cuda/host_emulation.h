// Hooks of the CUDA runtime host emulation (host_emulation.cc) for other
// test-only emulations layered on it (worker/comm's NCCL emulation, the
// SIMT emulation of the kernels).
#ifndef CHUNKFLOW_KERNELS_CUDA_HOST_EMULATION_H_
#define CHUNKFLOW_KERNELS_CUDA_HOST_EMULATION_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

namespace chunkflow::kernels::cuda::emulation {

// The emulated device count (CHUNKFLOW_EMULATED_GPUS, 1 to 64, default 1)
// and this thread's current device (cudaSetDevice).
int DeviceCount();
int CurrentDevice();

// The error cudaGetLastError returns next on this thread (a launch's).
void SetLastError(cudaError_t e);
// The dynamic shared memory `kernel` may use on the current device: 48 KiB
// unless cudaFuncSetAttribute raised it.
size_t MaxDynamicSharedBytes(const void* kernel);

// Whether every cudaMalloc block's bytes past its end (to the next 256, and
// 256 more) are still the guard bytes (0xFE) they were allocated with; false
// (and `what` names the first) after a write past an end. Rewrites the
// guards it reports, so a fault shows once. cudaFree checks its block's
// guard too: a broken one is printed on stderr, and cudaGetLastError
// returns cudaErrorIllegalAddress next.
bool CheckDeviceGuards(std::string* what = nullptr);

// Asynchronous work on `stream`: EnqueueAsync counts one operation,
// CompleteAsync marks the oldest one done. Events recorded after an
// operation, cudaStreamQuery and cudaStreamSynchronize wait for it.
void EnqueueAsync(cudaStream_t stream);
void CompleteAsync(cudaStream_t stream);

// Calls that synchronise a device implicitly (cudaMalloc, cudaFree,
// cudaHostAlloc, cudaFreeHost, cudaDeviceSynchronize) made while
// asynchronous work (an NCCL operation) was pending on the calling thread's
// device: on a GPU each waits for a kernel that may be waiting for a peer,
// NCCL's documented deadlock. The count since the last reset; `last` gets
// the last one's call and device.
int64_t ImplicitSyncHazards(std::string* last = nullptr);
void ResetImplicitSyncHazards();

}  // namespace chunkflow::kernels::cuda::emulation

#endif  // CHUNKFLOW_KERNELS_CUDA_HOST_EMULATION_H_
