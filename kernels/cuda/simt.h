// SIMT emulation: kernels/cuda's kernels, compiled as C++ for the CPU and
// run thread by thread, so CI checks the kernels' own code (indexing, tiles,
// masks, barriers, warp shuffles, the mma fragment layouts) against the CPU
// twins on machines without a GPU. No packaged library runs CUDA kernels on a
// CPU (the CUDA toolkit's emulation mode is long gone), hence this file.
//
// How a kernel runs (simt.cc):
//  - simt_rewrite.py turns a .cu file into C++: launches `K<<<g, b, s, st>>>(a)`
//    become `Launch(g, b, s, st).Run(...)`, `__shared__` arrays become
//    per-block storage (Shared), `extern __shared__` the launch's dynamic
//    shared memory, and `__syncthreads()` names its line;
//  - each block runs on the launching thread, each CUDA thread of it as a
//    fiber (Boost.Context) with its own stack; a fiber runs until it reaches
//    a barrier, a warp collective (__shfl_xor_sync, mma.sync, ldmatrix) or
//    its end;
//  - between two barriers the warps run one after another, each as far as
//    it can go, in an order that alternates from phase to phase (ascending
//    first in even blocks, descending first in odd ones), and a warp's lanes
//    run to each collective in alternating order: in a grid of two or more
//    blocks, shared memory read without the barrier (or collective) that
//    orders it after its write is read before the write in some block;
//  - a warp collective waits for every live lane of the warp (stricter than
//    CUDA, where a partial mask lets the other lanes be elsewhere);
//  - shared memory (static and dynamic) is filled with 0xFF bytes (NaN) at
//    the start of every block, so a read of an element no thread wrote shows;
//  - a launch whose configuration a GPU refuses (more than 1024 threads a
//    block, grid y or z over 65535, dynamic shared memory over 48 KiB without
//    cudaFuncAttributeMaxDynamicSharedMemorySize, or over the 227 KiB of
//    sm_90) fails as on a GPU: cudaGetLastError returns the error
//    (__launch_bounds__ and register limits are not checked);
//  - a write past the end of a cudaMalloc block (its guard bytes, checked
//    after every grid) fails the launch;
//  - a barrier that not every live thread of a block reaches at the same
//    line, a warp collective that not every live lane of the warp reaches,
//    or a deadlock between them, fails the launch with
//    cudaErrorLaunchFailure and a message on stderr naming block, threads
//    and lines.
// Arithmetic is the CPU's: exp2f, expf and friends are libm's, and
// mma.m16n8k16 multiplies the bf16 fragments exactly and sums in fp32 in k
// order, so results differ from a GPU's in the last bits, never in layout.
// It is slow (a context switch per thread per barrier): tests use small
// shapes.
#ifndef CHUNKFLOW_KERNELS_CUDA_SIMT_H_
#define CHUNKFLOW_KERNELS_CUDA_SIMT_H_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace chunkflow::kernels::cuda::simt {

// The calling CUDA thread's coordinates (valid inside a kernel).
const uint3& ThreadIdx();
const uint3& BlockIdx();
const dim3& BlockDim();
const dim3& GridDim();

// The launch's dynamic shared memory, poisoned at the start of each block.
unsigned char* DynamicShared();

// Changes with every block a thread of this process runs (Shared's poison).
uint64_t BlockSerial();

// __syncthreads() at file:line.
void SyncThreads(const char* file, int line);

// Warp collectives: every live lane of the warp must call them.
uint32_t ShflXor32(unsigned mask, uint32_t v, int lane_mask, int width);
uint64_t ShflXor64(unsigned mask, uint64_t v, int lane_mask, int width);
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d = a b + c in place.
void MmaM16N8K16(float c[4], const uint32_t a[4], const uint32_t b[2]);
// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: lane L names row
// L % 8 of matrix L / 8 (lanes past 8 x count are ignored); r[i] of lane L
// gets elements (L / 4, 2 (L % 4) + {0, 1}) of matrix i, or of its transpose.
// The rows must be 16-byte aligned and lie in the dynamic shared memory (the
// only shared memory our kernels give ldmatrix); anything else faults.
void LdMatrix(uint32_t* r, const void* row, int count, bool trans);

// cp.async.cg.shared.global with 16 bytes, src_bytes of them read (0 or 16,
// the rest zeros); its group closes at CpAsyncCommit; CpAsyncWait(n) lands
// the copies of all but the newest n committed groups. The source is read
// at issue; the shared memory is written when the wait lands the copy in
// even blocks (by BlockSerial), so a read before the wait (or, from another
// thread, before the barrier after it) sees what was there before, and at
// issue in odd blocks, so a refill issued while another thread still reads
// the old tile (no barrier between) clobbers it. dst must be 16-byte aligned in the
// dynamic shared memory, src 16-byte aligned; a thread that ends with
// copies in flight faults.
void CpAsync(void* dst, const void* src, int src_bytes);
void CpAsyncCommit();
void CpAsyncWait(int pending_groups);

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t dynamic_shared = 0;
  cudaStream_t stream = nullptr;
  const void* kernel = nullptr;  // for its shared-memory attribute; may be null
};

// Runs body() as every thread of every block; the launch's error (also
// what cudaGetLastError returns next).
cudaError_t RunGrid(const LaunchConfig& config, const std::function<void()>& body);

// What `kernel<<<grid, block, shared, stream>>>(args...)` becomes.
class Launch {
 public:
  Launch(dim3 grid, dim3 block, size_t dynamic_shared = 0, cudaStream_t stream = nullptr) {
    config_.grid = grid;
    config_.block = block;
    config_.dynamic_shared = dynamic_shared;
    config_.stream = stream;
  }
  template <typename K>
  Launch& Kernel(K* kernel) {
    config_.kernel = reinterpret_cast<const void*>(kernel);
    return *this;
  }
  // The arguments are evaluated once, as a launch's are, and each thread
  // calls the kernel with its own copies.
  template <typename F, typename... A>
  void Run(F call, A&&... args) {
    const std::tuple<std::decay_t<A>...> values(std::forward<A>(args)...);
    RunGrid(config_, [&] { std::apply(call, values); });
  }

 private:
  LaunchConfig config_;
};

// A `__shared__ T name[...]` of one kernel: one copy per OS thread (a block
// runs on one), poisoned when a new block first touches it.
template <typename T, typename Site>
T& Shared(Site) {
  static_assert(std::is_trivially_copyable_v<T>, "shared memory holds plain data");
  alignas(16) static thread_local T storage;
  static thread_local uint64_t serial = 0;
  if (serial != BlockSerial()) {
    std::memset(static_cast<void*>(&storage), 0xFF, sizeof(T));
    serial = BlockSerial();
  }
  return storage;
}

// CUDA's mixed-type min / max of integers.
template <typename A, typename B>
inline std::common_type_t<A, B> Min(A a, B b) {
  return a < b ? a : b;
}
template <typename A, typename B>
inline std::common_type_t<A, B> Max(A a, B b) {
  return a < b ? b : a;
}

}  // namespace chunkflow::kernels::cuda::simt

// The device-side names the kernels use.
#define threadIdx (::chunkflow::kernels::cuda::simt::ThreadIdx())
#define blockIdx (::chunkflow::kernels::cuda::simt::BlockIdx())
#define blockDim (::chunkflow::kernels::cuda::simt::BlockDim())
#define gridDim (::chunkflow::kernels::cuda::simt::GridDim())
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#define __syncthreads() ::chunkflow::kernels::cuda::simt::SyncThreads(__FILE__, __LINE__)

// CUDA's min / max of mixed integer types (Min, Max).
using ::chunkflow::kernels::cuda::simt::Max;
using ::chunkflow::kernels::cuda::simt::Min;
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  return Min(a, b);
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  return Max(a, b);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  if constexpr (sizeof(T) == 4) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bits = ::chunkflow::kernels::cuda::simt::ShflXor32(mask, bits, lane_mask, width);
    std::memcpy(&v, &bits, 4);
  } else {
    static_assert(sizeof(T) == 8, "__shfl_xor_sync of 4- or 8-byte values");
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    bits = ::chunkflow::kernels::cuda::simt::ShflXor64(mask, bits, lane_mask, width);
    std::memcpy(&v, &bits, 8);
  }
  return v;
}

inline float __fadd_rn(float a, float b) { return a + b; }

// cuda_runtime.h's kernel-pointer overload is nvcc's only.
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}

#endif  // CHUNKFLOW_KERNELS_CUDA_SIMT_H_
