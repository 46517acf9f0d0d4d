// Kernels of simt_test_kernels.h, written as for nvcc.
#include "kernels/cuda/simt_test_kernels.h"

#include <cuda_bf16.h>

#include "kernels/cuda/mma.h"

namespace chunkflow::kernels::cuda::simt_test {
namespace {

__global__ void CountThreadsKernel(int* out) {
  const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  const int per_block = blockDim.x * blockDim.y * blockDim.z;
  out[block * per_block + thread] += 1;
}

__global__ void ShiftKernel(float* out, const float* in, int n, int shift, bool with_barrier) {
  __shared__ float s[1024];
  const int t = threadIdx.x;
  s[t] = in[t];
  if (with_barrier) __syncthreads();
  out[blockIdx.x * n + t] = s[min(max(t + shift, 0), n - 1)];
}

template <typename T>
__global__ void WarpSumKernel(T* out, const T* in) {
  T v = in[threadIdx.x];
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  out[threadIdx.x] = v;
}


// Element i of a fragment register pair: the PTX ISA's "Matrix Fragments
// for mma.m16n8k16 with floating point type" tables, element by element
// (groupID = lane >> 2, threadID_in_group = lane % 4).
__global__ void MmaKernel(float* d, const uint16_t* a, const uint16_t* b, const float* c) {
  const int lane = threadIdx.x, group = lane >> 2, tig = lane % 4;
  uint32_t ra[4] = {0, 0, 0, 0}, rb[2] = {0, 0};
  for (int i = 0; i < 8; ++i) {  // a0..a7, two per register, a_{2r} low
    const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
    const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
    ra[i / 2] |= static_cast<uint32_t>(a[row * 16 + col]) << (16 * (i & 1));
  }
  for (int i = 0; i < 4; ++i) {  // b0..b3
    const int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
    rb[i / 2] |= static_cast<uint32_t>(b[row * 8 + group]) << (16 * (i & 1));
  }
  float rc[4];
  for (int i = 0; i < 4; ++i) {  // c0..c3
    const int row = i < 2 ? group : group + 8;
    rc[i] = c[row * 8 + tig * 2 + (i & 1)];
  }
  MmaM16N8K16Bf16(rc, ra, rb);
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? group : group + 8;
    d[row * 8 + tig * 2 + (i & 1)] = rc[i];
  }
}

__global__ void ReadUnwrittenKernel(float* out) {
  __shared__ float s[256];
  if (blockIdx.x == 0) s[threadIdx.x] = 1.0f;
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

__global__ void DivergentBarrierKernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

__global__ void ShuffleAfterExitKernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void ShuffleFromExitedLaneKernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffu, 1.0f, 16);
}

__global__ void ShuffleWithWidthKernel(float* out) {
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<float>(threadIdx.x), 16, 8);
}

__global__ void ShuffleAgainstBarrierKernel(float* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  } else {
    __syncthreads();
  }
}

__global__ void WriteOnePastKernel(float* out, int n) {
  for (int i = threadIdx.x; i <= n; i += blockDim.x) out[i] = 1.0f;
}

__global__ void DynamicSharedKernel(float* out, int floats, bool overrun) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);
  for (int i = threadIdx.x; i < floats + (overrun ? 1 : 0); i += blockDim.x) s[i] = 1.0f;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int i = 0; i < floats; ++i) sum += s[i];
    out[0] = sum;
  }
}

// One warp loads a 16x16 bf16 tile (shared, leading dimension 24) with one
// ldmatrix.x4: matrix m is rows 8 (m & 1).., columns 8 (m >> 1).. (an mma
// A fragment's order); out[lane * 4 + i] is the lane's register i. Lane 5
// misaligns its row by one element when asked.
template <bool kTrans>
__global__ void LdMatrixKernel(uint32_t* out, const uint16_t* tile, bool misalign) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* s = reinterpret_cast<uint16_t*>(smem);
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) s[(i / 16) * 24 + i % 16] = tile[i];
  __syncthreads();
  const int m = lane / 8;
  uint32_t v[4];
  LdMatrixX4<kTrans>(v, s + (8 * (m & 1) + lane % 8) * 24 + 8 * (m >> 1) +
                            (misalign && lane == 5 ? 1 : 0));
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = v[i];
}

__global__ void CpAsyncKernel(float* out, const float* in, CpAsyncMode mode) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* s = reinterpret_cast<float*>(smem);  // 2n chunks of 4 floats
  const int t = threadIdx.x, n = blockDim.x;
  const int dst_off = mode == CpAsyncMode::kMisalignedDst ? 2 : 0;
  const int src_off = mode == CpAsyncMode::kMisalignedSrc ? 1 : 0;
  CpAsync16(s + 4 * t + dst_off, in + 4 * t + src_off, t % 8 == 7 ? 0 : 16);
  CpAsyncCommit();
  CpAsync16(s + 4 * (n + t), in + 4 * (n + t), 16);
  CpAsyncCommit();
  if (mode != CpAsyncMode::kNoWait) CpAsyncWait<1>();
  if (mode != CpAsyncMode::kNoBarrier) __syncthreads();
  const int u = (t + 32) % n;
  float* o = out + 8 * (static_cast<int64_t>(blockIdx.x) * n + t);
  for (int i = 0; i < 4; ++i) o[i] = s[4 * u + i];
  if (mode != CpAsyncMode::kNoWait) CpAsyncWait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) o[4 + i] = s[4 * (n + u) + i];
}

}  // namespace

cudaError_t CpAsync(float* out, const float* in, int n, int blocks, CpAsyncMode mode) {
  CpAsyncKernel<<<blocks, n, 2 * n * 4 * sizeof(float)>>>(out, in, mode);
  return cudaGetLastError();
}

cudaError_t CountThreads(int* out, dim3 grid, dim3 block) {
  CountThreadsKernel<<<grid, block>>>(out);
  return cudaGetLastError();
}

cudaError_t ShiftThroughShared(float* out, const float* in, int n, int blocks, int shift,
                               bool with_barrier) {
  ShiftKernel<<<blocks, n>>>(out, in, n, shift, with_barrier);
  return cudaGetLastError();
}

cudaError_t WarpSums(float* out, const float* in, int n) {
  WarpSumKernel<float><<<1, n>>>(out, in);
  return cudaGetLastError();
}

cudaError_t WarpSumsDouble(double* out, const double* in, int n) {
  WarpSumKernel<double><<<1, n>>>(out, in);
  return cudaGetLastError();
}

cudaError_t Mma(float* d, const uint16_t* a, const uint16_t* b, const float* c) {
  MmaKernel<<<1, 32>>>(d, a, b, c);
  return cudaGetLastError();
}

cudaError_t LdMatrix(uint32_t* out, const uint16_t* tile, bool trans, bool misalign) {
  constexpr size_t kBytes = 16 * 24 * sizeof(uint16_t);
  if (trans) {
    LdMatrixKernel<true><<<1, 32, kBytes>>>(out, tile, misalign);
  } else {
    LdMatrixKernel<false><<<1, 32, kBytes>>>(out, tile, misalign);
  }
  return cudaGetLastError();
}

cudaError_t ReadUnwrittenShared(float* out, int n) {
  ReadUnwrittenKernel<<<2, n>>>(out);
  return cudaGetLastError();
}

cudaError_t DivergentBarrier(float* out) {
  DivergentBarrierKernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

cudaError_t ShuffleAfterExit(float* out) {
  ShuffleAfterExitKernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

cudaError_t ShuffleFromExitedLane(float* out) {
  ShuffleFromExitedLaneKernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

cudaError_t ShuffleWithWidth(float* out) {
  ShuffleWithWidthKernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

cudaError_t ShuffleAgainstBarrier(float* out) {
  ShuffleAgainstBarrierKernel<<<1, 32>>>(out);
  return cudaGetLastError();
}

cudaError_t WriteOnePast(float* out, int n) {
  WriteOnePastKernel<<<1, 128>>>(out, n);
  return cudaGetLastError();
}

cudaError_t UseDynamicShared(float* out, int shared_bytes, int attribute, bool overrun) {
  if (attribute > 0) {
    const cudaError_t e = cudaFuncSetAttribute(
        DynamicSharedKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, attribute);
    if (e != cudaSuccess) return e;
  }
  DynamicSharedKernel<<<1, 128, static_cast<size_t>(shared_bytes)>>>(
      out, shared_bytes / static_cast<int>(sizeof(float)), overrun);
  return cudaGetLastError();
}

}  // namespace chunkflow::kernels::cuda::simt_test
