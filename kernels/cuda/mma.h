// Warp-level tensor-core instructions, and the asynchronous global-to-shared
// copy that feeds their tiles, for the kernels (.cu files include this),
// each emulated on the CPU under the SIMT emulation (simt.h).
//
// One warp's mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32:
// c = a b + c with a (16x16) and b (16x8) as bf16 fragments and c (16x8)
// fp32, laid out as the PTX ISA's "Matrix Fragments for mma.m16n8k16" tables
// say (see flash_attention.cu's header).
#ifndef CHUNKFLOW_KERNELS_CUDA_MMA_H_
#define CHUNKFLOW_KERNELS_CUDA_MMA_H_

#include <cstdint>

namespace chunkflow::kernels::cuda {

__device__ __forceinline__ void MmaM16N8K16Bf16(float c[4], const uint32_t a[4],
                                                const uint32_t b[2]) {
#ifdef CHUNKFLOW_SIMT
  ::chunkflow::kernels::cuda::simt::MmaM16N8K16(c, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// One warp's ldmatrix.sync.aligned.m8n8.x4.shared.b16 (kTrans: .trans): lane
// L passes the address of row L % 8 of matrix L / 8 (8 bf16, 16-byte
// aligned, in shared memory); r[i] receives the lane's fragment of matrix i:
// row L / 4, columns 2 (L % 4) and 2 (L % 4) + 1 (low half: the lower
// column), or, transposed, column L / 4, rows 2 (L % 4) and 2 (L % 4) + 1.
// That is one mma.m16n8k16 A fragment, or two B fragments, per instruction.
template <bool kTrans>
__device__ __forceinline__ void LdMatrixX4(uint32_t r[4], const void* row) {
#ifdef CHUNKFLOW_SIMT
  ::chunkflow::kernels::cuda::simt::LdMatrix(r, row, 4, kTrans);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  }
#endif
}

// cp.async.cg.shared.global (sm_80+): 16 bytes from global `src` to shared
// `dst` (both 16-byte aligned), of which the first src_bytes (0 or 16) are
// read and the rest written as zeros, asynchronously: the copy is complete
// only after a CpAsyncWait that covers its group (CpAsyncCommit closes a
// group), and visible to other threads only after a barrier that follows.
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, int src_bytes) {
#ifdef CHUNKFLOW_SIMT
  ::chunkflow::kernels::cuda::simt::CpAsync(dst, src, src_bytes);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src),
               "r"(src_bytes)
               : "memory");
#endif
}

__device__ __forceinline__ void CpAsyncCommit() {
#ifdef CHUNKFLOW_SIMT
  ::chunkflow::kernels::cuda::simt::CpAsyncCommit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending of this thread's committed groups (the
// newest) are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
#ifdef CHUNKFLOW_SIMT
  ::chunkflow::kernels::cuda::simt::CpAsyncWait(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_MMA_H_
