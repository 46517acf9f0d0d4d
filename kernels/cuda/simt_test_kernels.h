// Kernels that exercise the SIMT emulation itself (simt_test.cc): what it
// must compute, and the faults it must report. Built only for the emulation.
#ifndef CHUNKFLOW_KERNELS_CUDA_SIMT_TEST_KERNELS_H_
#define CHUNKFLOW_KERNELS_CUDA_SIMT_TEST_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace chunkflow::kernels::cuda::simt_test {

// out[i] += 1 at the thread's linear index in the grid, over a grid and
// block of the given shapes (x, y, z).
cudaError_t CountThreads(int* out, dim3 grid, dim3 block);

// In each of `blocks` blocks of n threads, through shared memory:
// out[b * n + t] = in[t + 1] (shift +1) or in[t - 1] (shift -1), clamped to
// [0, n); with the barrier between the write and the read, or without it (a
// race).
cudaError_t ShiftThroughShared(float* out, const float* in, int n, int blocks, int shift,
                               bool with_barrier);

// out[t] = the warp sum of in over __shfl_xor_sync, for n threads.
cudaError_t WarpSums(float* out, const float* in, int n);
cudaError_t WarpSumsDouble(double* out, const double* in, int n);

// d (16x8, row-major) = a (16x16, row-major, bf16 bits) b (16x8, row-major,
// bf16 bits) + c, one warp, fragments loaded as the PTX ISA lays them out.
cudaError_t Mma(float* d, const uint16_t* a, const uint16_t* b, const float* c);

// One warp's ldmatrix.x4 (trans: .trans) of a 16x16 bf16 tile (row-major
// bits) staged in shared memory: matrix m is rows 8 (m & 1).., columns
// 8 (m >> 1)..; out[lane * 4 + i] = the lane's register i (128 words).
// misalign: lane 5's row address is off by 2 bytes (a fault).
cudaError_t LdMatrix(uint32_t* out, const uint16_t* tile, bool trans, bool misalign);

// cp.async in `blocks` blocks of n threads (n a multiple of 32, >= 64):
// thread t copies in[4t..4t+4) to shared chunk t (zero-filled, no source
// bytes, when t % 8 == 7) as one group, then in[4(n+t)..) to chunk n + t as
// a second; waits for the first group, a barrier, reads chunk u = (t + 32)
// % n (another warp's) into out[8 (b n + t) ..+4); waits for the second,
// a barrier, reads chunk n + u into out[8 (b n + t) + 4 ..+4).
enum class CpAsyncMode {
  kCorrect,
  kNoBarrier,      // no barrier before the first read (a race)
  kNoWait,         // no wait at all: copies in flight at the thread's exit
  kMisalignedDst,  // the first copy's destination 8 bytes off
  kMisalignedSrc,  // the first copy's source 4 bytes off
};
cudaError_t CpAsync(float* out, const float* in, int n, int blocks, CpAsyncMode mode);

// Two blocks of n threads: block 0 writes its static shared array and
// reads it back, block 1 only reads it; out[b * n + t].
cudaError_t ReadUnwrittenShared(float* out, int n);

// Faults: threads of one block at two different __syncthreads(); lanes
// that exited before a full-mask shuffle; a shuffle waiting for lanes that
// wait at a barrier.
cudaError_t DivergentBarrier(float* out);
cudaError_t ShuffleAfterExit(float* out);
// Lanes >= 16 exit; the others shuffle with mask 0xffff at xor 16, reading
// lanes that exited.
cudaError_t ShuffleFromExitedLane(float* out);
cudaError_t ShuffleAgainstBarrier(float* out);

// out[i] = 1 for i in [0, n] - one element past n.
cudaError_t WriteOnePast(float* out, int n);

// __shfl_xor_sync(mask, lane, 16, width 8) per lane of one warp: the
// lane of an earlier segment, or the lane's own value.
cudaError_t ShuffleWithWidth(float* out);

// `shared_bytes` of dynamic shared memory, written in full (or one float
// past its end); `attribute` (when > 0) set first as the kernel's
// cudaFuncAttributeMaxDynamicSharedMemorySize.
cudaError_t UseDynamicShared(float* out, int shared_bytes, int attribute, bool overrun);

}  // namespace chunkflow::kernels::cuda::simt_test

#endif  // CHUNKFLOW_KERNELS_CUDA_SIMT_TEST_KERNELS_H_
