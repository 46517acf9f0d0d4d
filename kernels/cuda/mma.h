// One warp's mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32:
// c = a b + c with a (16x16) and b (16x8) as bf16 fragments and c (16x8)
// fp32, laid out as the PTX ISA's "Matrix Fragments for mma.m16n8k16" tables
// say (see flash_attention.cu's header). Device code: .cu files include it.
// Under the SIMT emulation (simt.h) the same instruction is emulated on the
// CPU.
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

}  // namespace chunkflow::kernels::cuda

#endif  // CHUNKFLOW_KERNELS_CUDA_MMA_H_
