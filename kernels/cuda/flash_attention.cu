// Kernels of flash_attention.h.
//
// Fragment layouts of mma.sync.m16n8k16 (bf16 A/B, fp32 C), PTX ISA
// "Matrix Fragments for mma.m16n8k16": with g = lane / 4 and t = lane % 4,
//   A (16x16, row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..],
//                         a3 = A[g+8][2t+8..]   (two bf16 per register, low = lower column)
//   B (16x8):             b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C (16x8, fp32):       c0, c1 = C[g][2t], C[g][2t+1];  c2, c3 = C[g+8][2t], C[g+8][2t+1]
// so two adjacent C tiles of a product are the A fragment of the next
// product (CToA): P and dS never leave registers.
#include "kernels/cuda/flash_attention.h"

#include <cuda_bf16.h>

#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "kernels/cuda/mma.h"

namespace chunkflow::kernels::cuda {
namespace {

using bf16 = __nv_bfloat16;

// The forward and dq kernels take kWarps x 16 query rows per block (each
// warp 16 rows) against key tiles of kBc; the dk/dv kernel takes
// kDkDvWarps x 16 = kBc keys per block against query tiles of kBr.
constexpr int kBr = 64;  // query rows per tile of the dk/dv kernel
constexpr int kBc = 64;  // keys per tile
constexpr int kDkDvWarps = kBc / 16;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Fragments come from the shared tiles through ldmatrix.x4 (mma.h), one
// instruction per A fragment or per two B fragments. Lane L names row L % 8
// of the instruction's matrix L / 8 (8 x 8 bf16 each); the tiles' leading
// dimension D + 8 keeps rows 16-byte aligned and spreads a matrix's eight
// rows over all the banks.

// A fragment of a row-major shared tile X: rows r0..r0+15, columns k0..k0+15
// (matrices: rows r0 / r0 + 8 by columns k0 / k0 + 8, the a0..a3 order).
__device__ __forceinline__ void LoadA(uint32_t a[4], const bf16* x, int r0, int k0, int ld,
                                      int lane) {
  const int i = lane / 8;
  LdMatrixX4<false>(a, x + (r0 + lane % 8 + 8 * (i & 1)) * ld + k0 + 8 * (i >> 1));
}

// The B fragments of columns n0..n0+7 (b[0], b[1]) and n0+8..n0+15 (b[2],
// b[3]) with B[k][n] = Y[n][k] (Y row-major: K^T from K), rows k0..k0+15.
__device__ __forceinline__ void LoadBT2(uint32_t b[4], const bf16* y, int n0, int k0, int ld,
                                        int lane) {
  const int i = lane / 8;
  LdMatrixX4<false>(b, y + (n0 + lane % 8 + 8 * (i >> 1)) * ld + k0 + 8 * (i & 1));
}

// The same two B fragments with B[k][n] = Y[k][n] (Y row-major: V as it
// is): ldmatrix's transpose.
__device__ __forceinline__ void LoadBN2(uint32_t b[4], const bf16* y, int k0, int n0, int ld,
                                        int lane) {
  const int i = lane / 8;
  LdMatrixX4<true>(b, y + (k0 + lane % 8 + 8 * (i & 1)) * ld + n0 + 8 * (i >> 1));
}

// Two adjacent 16x8 C tiles -> the 16x16 A fragment they form.
__device__ __forceinline__ void CToA(uint32_t a[4], const float c0[4], const float c1[4]) {
  a[0] = Pack(c0[0], c0[1]);
  a[1] = Pack(c0[2], c0[3]);
  a[2] = Pack(c1[0], c1[1]);
  a[3] = Pack(c1[2], c1[3]);
}

// c = A B^T for this warp's 16 rows r0.. of the shared tile `a` against the
// kN rows of the shared tile `b` (both row-major, D columns, leading
// dimension D + 8): kN / 8 C tiles. c is overwritten.
template <int D, int kN>
__device__ __forceinline__ void ProductNT(float (&c)[kN / 8][4], const bf16* a, const bf16* b,
                                          int r0, int lane) {
  constexpr int kLd = D + 8;
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t fa[4];
    LoadA(fa, a, r0, kk * 16, kLd, lane);
#pragma unroll
    for (int j = 0; j < kN / 8; j += 2) {
      uint32_t fb[4];
      LoadBT2(fb, b, j * 8, kk * 16, kLd, lane);
      MmaM16N8K16Bf16(c[j], fa, fb);
      MmaM16N8K16Bf16(c[j + 1], fa, fb + 2);
    }
  }
}

// The backward's pair of products per tile: c1 = A1 B1^T and c2 = A2 B2^T
// (S and dP, or S^T and dP^T), in one pass over the head dimension.
template <int D, int kN>
__device__ __forceinline__ void ProductsNT(float (&c1)[kN / 8][4], float (&c2)[kN / 8][4],
                                           const bf16* a1, const bf16* a2, const bf16* b1,
                                           const bf16* b2, int r0, int lane) {
  constexpr int kLd = D + 8;
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
    c1[j][0] = c1[j][1] = c1[j][2] = c1[j][3] = 0.0f;
    c2[j][0] = c2[j][1] = c2[j][2] = c2[j][3] = 0.0f;
  }
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t f1[4], f2[4];
    LoadA(f1, a1, r0, kk * 16, kLd, lane);
    LoadA(f2, a2, r0, kk * 16, kLd, lane);
#pragma unroll
    for (int j = 0; j < kN / 8; j += 2) {
      uint32_t fb[4];
      LoadBT2(fb, b1, j * 8, kk * 16, kLd, lane);
      MmaM16N8K16Bf16(c1[j], f1, fb);
      MmaM16N8K16Bf16(c1[j + 1], f1, fb + 2);
      LoadBT2(fb, b2, j * 8, kk * 16, kLd, lane);
      MmaM16N8K16Bf16(c2[j], f2, fb);
      MmaM16N8K16Bf16(c2[j + 1], f2, fb + 2);
    }
  }
}

// Scores of this thread's two rows (c0/c1: position pos_lo, c2/c3: pos_hi)
// against keys k0.. (kN of them) become -inf where the key is after the
// row's position, at or past n_keys, or the row is not valid.
template <int kN>
__device__ __forceinline__ void MaskScores(float (&s)[kN / 8][4], int64_t k0, int t,
                                           int64_t pos_lo, int64_t pos_hi, int64_t n_keys,
                                           bool ok_lo, bool ok_hi) {
#pragma unroll
  for (int j = 0; j < kN / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t key = k0 + j * 8 + 2 * t + (e & 1);
      const bool lo = e < 2;
      const bool valid = (lo ? ok_lo : ok_hi) && key <= (lo ? pos_lo : pos_hi) && key < n_keys;
      if (!valid) s[j][e] = -INFINITY;
    }
  }
}

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Rows [row0, row0 + valid) of an fp32 matrix with row stride `stride`
// (columns [0, D) from `src`) into a bf16 shared tile of kRows rows with
// leading dimension D + 8; rows >= valid are zero. Four columns per thread
// and step: 16-byte loads, 8-byte stores (D and the strides are multiples of
// 16 floats, the buffers 16-byte aligned).
template <int D, int kRows, int kThreads>
__device__ __forceinline__ void LoadTile(bf16* s, const float* src, int64_t row0, int valid,
                                         int64_t stride) {
  constexpr int kQuads = D / 4;
  for (int i = threadIdx.x; i < kRows * kQuads; i += kThreads) {
    const int r = i / kQuads, c = (i % kQuads) * 4;
    const float4 x = r < valid ? *reinterpret_cast<const float4*>(src + (row0 + r) * stride + c)
                               : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    uint2 packed;
    packed.x = Pack(x.x, x.y);
    packed.y = Pack(x.z, x.w);
    *reinterpret_cast<uint2*>(s + r * (D + 8) + c) = packed;
  }
}

// The same tile from a bf16 matrix (the staged copy, see Staging), by
// cp.async: 16 bytes per copy, rows >= valid zero-filled. It lands at the
// CpAsyncWait that covers the caller's next CpAsyncCommit.
template <int D, int kRows, int kThreads>
__device__ __forceinline__ void LoadTile(bf16* s, const bf16* src, int64_t row0, int valid,
                                         int64_t stride) {
  constexpr int kChunks = D / 8;
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const bool ok = r < valid;
    CpAsync16(s + r * (D + 8) + c, src + (row0 + (ok ? r : 0)) * stride + c, ok ? 16 : 0);
  }
}

// K and V rows [k0, k0 + kBc) of kv head hk (fewer at the end: rows >=
// n_keys are zeros) into buf[0] (K) and buf[kBc * (D + 8)] (V), as one
// cp.async group.
template <int D, int kThreads, typename KV>
__device__ __forceinline__ void LoadKV(bf16* buf, const KV* k, const KV* v, int hk, int Hk,
                                       int64_t k0, int64_t n_keys) {
  const int rows = static_cast<int>(min(static_cast<int64_t>(kBc), n_keys - k0));
  const int64_t stride = static_cast<int64_t>(Hk) * D;
  LoadTile<D, kBc, kThreads>(buf, k + static_cast<int64_t>(hk) * D, k0, rows, stride);
  LoadTile<D, kBc, kThreads>(buf + kBc * (D + 8), v + static_cast<int64_t>(hk) * D, k0, rows,
                             stride);
  CpAsyncCommit();
}

// The K/V loop step of the forward and dq kernels (tiles double-buffered in
// sKV, 2 x kBc x (D + 8) each): issues tile + 1 into the other buffer, which
// every warp left at the end of the previous tile, and waits for tile's own
// group. Returns tile's buffer (K, then V at kBc * (D + 8)); the caller's
// barrier makes it visible to every thread.
template <int D, int kThreads, typename KV>
__device__ __forceinline__ const bf16* NextKVTile(bf16* sKV, int tile, int n_tiles, const KV* k,
                                                  const KV* v, int hk, int Hk, int64_t n_keys) {
  constexpr int kBuffer = 2 * kBc * (D + 8);
  if (tile + 1 < n_tiles) {
    LoadKV<D, kThreads>(sKV + ((tile + 1) % 2) * kBuffer, k, v, hk, Hk,
                        static_cast<int64_t>(tile + 1) * kBc, n_keys);
    CpAsyncWait<1>();
  } else {
    CpAsyncWait<0>();
  }
  return sKV + (tile % 2) * kBuffer;
}

// Blocks an SM the forward and dq kernels are compiled for: at head dims up
// to 64, two 8-warp blocks (128 registers) or three 4-warp ones (168), one
// block more an SM than their natural 130 / 170 registers allow. ptxas
// then spills up to 16 bytes in the forward and dq (ops_resource_usage.txt).
// At 128 the cap would spill hundreds of bytes, so none.
template <int D, int kWarps>
constexpr int kQueryBlocksPerSm = D > 64 ? 1 : kWarps == 8 ? 2 : 3;

// ---------------------------------------------------------------------------
// Forward: a block per (query tile of kWarps x 16 rows of a segment, head).
// ---------------------------------------------------------------------------

// The K/V tiles are double-buffered: tile i + 1 is loaded while tile i is
// multiplied. KV = bf16 (the staged copies): by cp.async, so the load runs
// under the products; KV = float (CHUNKFLOW_FLASH_STAGING=0): converted by
// the threads as they load, before the products.
template <int D, int kWarps, typename KV>
__global__ void __launch_bounds__(32 * kWarps, kQueryBlocksPerSm<D, kWarps>)
    FlashForwardKernel(float* out, float* lse, const float* q, const KV* k, const KV* v,
                       int64_t q_begin, int64_t offset, int length, int H, int Hk,
                       float scale_log2) {
  constexpr int kLd = D + 8;
  constexpr int kRows = 16 * kWarps, kThreads = 32 * kWarps;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sKV = sQ + kRows * kLd;  // [2 buffers][K, V][kBc][kLd]
  const int h = blockIdx.y, hk = h / (H / Hk);
  // The last query tile sees the most keys: the longest blocks start first.
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows;
  const int rows = min(kRows, length - q0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t n_keys = offset + q0 + rows;  // what the tile's last row sees
  // K/V tile 0 in flight while the threads load Q (fp32, converted).
  LoadKV<D, kThreads>(sKV, k, v, hk, Hk, 0, n_keys);
  LoadTile<D, kRows, kThreads>(sQ, q + static_cast<int64_t>(h) * D, q_begin + q0, rows,
                               static_cast<int64_t>(H) * D);
  const int64_t pos_lo = offset + q0 + warp * 16 + g, pos_hi = pos_lo + 8;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;
  float o[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

  const int n_tiles = static_cast<int>((n_keys + kBc - 1) / kBc);
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int64_t k0 = static_cast<int64_t>(tile) * kBc;
    const int kv_rows = static_cast<int>(min(static_cast<int64_t>(kBc), n_keys - k0));
    const bf16* sK = NextKVTile<D, kThreads>(sKV, tile, n_tiles, k, v, hk, Hk, n_keys);
    __syncthreads();  // tile `tile` (and sQ) written by every thread
    const bf16* sV = sK + kBc * kLd;
    float s[kBc / 8][4];
    ProductNT<D, kBc>(s, sQ, sK, warp * 16, lane);
    // Only a tile that reaches past the warp's first query (the diagonal),
    // or a partial one, has entries to mask.
    if (k0 + kBc - 1 > offset + q0 + warp * 16 || kv_rows < kBc || rows < kRows) {
      MaskScores<kBc>(s, k0, t, pos_lo, pos_hi, n_keys, true, true);
    }
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int j = 0; j < kBc / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float x = s[j][e] * scale_log2;
        s[j][e] = x;
        if (e < 2) {
          mx_lo = fmaxf(mx_lo, x);
        } else {
          mx_hi = fmaxf(mx_hi, x);
        }
      }
    }
    const float new_lo = fmaxf(m_lo, QuadMax(mx_lo)), new_hi = fmaxf(m_hi, QuadMax(mx_hi));
    const float alpha_lo = new_lo == -INFINITY ? 1.0f : exp2f(m_lo - new_lo);
    const float alpha_hi = new_hi == -INFINITY ? 1.0f : exp2f(m_hi - new_hi);
    float sum_lo = 0.0f, sum_hi = 0.0f;
#pragma unroll
    for (int j = 0; j < kBc / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float m = e < 2 ? new_lo : new_hi;
        const float p = m == -INFINITY ? 0.0f : exp2f(s[j][e] - m);
        s[j][e] = p;
        if (e < 2) {
          sum_lo += p;
        } else {
          sum_hi += p;
        }
      }
    }
    l_lo = l_lo * alpha_lo + sum_lo;  // per-thread partial sums; alpha is uniform per row
    l_hi = l_hi * alpha_hi + sum_hi;
    m_lo = new_lo;
    m_hi = new_hi;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      o[j][0] *= alpha_lo;
      o[j][1] *= alpha_lo;
      o[j][2] *= alpha_hi;
      o[j][3] *= alpha_hi;
    }
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[4];
      CToA(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        uint32_t b[4];
        LoadBN2(b, sV, kk * 16, j * 8, kLd, lane);
        MmaM16N8K16Bf16(o[j], a, b);
        MmaM16N8K16Bf16(o[j + 1], a, b + 2);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }
  l_lo = QuadSum(l_lo);
  l_hi = QuadSum(l_hi);
  const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = half == 0 ? r_lo : r_hi;
    if (r >= rows) continue;
    const float l = half == 0 ? l_lo : l_hi;
    const float m = half == 0 ? m_lo : m_hi;
    const int64_t row = q_begin + q0 + r;
    float* dst = out + (row * H + h) * D;
    const float inv = 1.0f / l;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      dst[j * 8 + 2 * t] = o[j][2 * half] * inv;
      dst[j * 8 + 2 * t + 1] = o[j][2 * half + 1] * inv;
    }
    if (t == 0) lse[row * H + h] = (m + log2f(l)) * kLn2;
  }
}

// delta[w] = sum_d dout[w, d] * out[w, d], a warp per (row, head).
__global__ void FlashDeltaKernel(float* delta, const float* dout, const float* out, int64_t n,
                                 int D) {
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (w >= n) return;  // whole warps leave together
  float s = 0.0f;
  for (int d = lane; d < D; d += 32) s += dout[w * D + d] * out[w * D + d];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) delta[w] = s;
}

// ---------------------------------------------------------------------------
// Backward dq: a block per (query tile of kWarps x 16 rows of a segment, head).
// ---------------------------------------------------------------------------

// K/V tiles double-buffered as in the forward. KV = bf16: Q, dO and K/V
// are the staged copies, Q and dO loaded by cp.async in K/V tile 0's group.
template <int D, int kWarps, typename KV>
__global__ void __launch_bounds__(32 * kWarps, kQueryBlocksPerSm<D, kWarps>)
    FlashDqKernel(float* dq, const KV* dout, const KV* q, const float* lse, const float* delta,
                  const KV* k, const KV* v, int64_t q_begin, int64_t offset, int length, int H,
                  int Hk, float scale, float scale_log2) {
  constexpr int kLd = D + 8;
  constexpr int kRows = 16 * kWarps, kThreads = 32 * kWarps;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sO = sQ + kRows * kLd;   // dO
  bf16* sKV = sO + kRows * kLd;  // [2 buffers][K, V][kBc][kLd]
  const int h = blockIdx.y, hk = h / (H / Hk);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kRows;  // the longest blocks first
  const int rows = min(kRows, length - q0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t stride = static_cast<int64_t>(H) * D;
  LoadTile<D, kRows, kThreads>(sQ, q + static_cast<int64_t>(h) * D, q_begin + q0, rows, stride);
  LoadTile<D, kRows, kThreads>(sO, dout + static_cast<int64_t>(h) * D, q_begin + q0, rows,
                               stride);
  const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
  const bool ok_lo = r_lo < rows, ok_hi = r_hi < rows;
  const float lse_lo = ok_lo ? lse[(q_begin + q0 + r_lo) * H + h] * kLog2e : 0.0f;
  const float lse_hi = ok_hi ? lse[(q_begin + q0 + r_hi) * H + h] * kLog2e : 0.0f;
  const float del_lo = ok_lo ? delta[(q_begin + q0 + r_lo) * H + h] : 0.0f;
  const float del_hi = ok_hi ? delta[(q_begin + q0 + r_hi) * H + h] : 0.0f;
  const int64_t n_keys = offset + q0 + rows;
  const int64_t pos_lo = offset + q0 + r_lo, pos_hi = pos_lo + 8;
  float acc[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  const int n_tiles = static_cast<int>((n_keys + kBc - 1) / kBc);
  LoadKV<D, kThreads>(sKV, k, v, hk, Hk, 0, n_keys);
  for (int tile = 0; tile < n_tiles; ++tile) {
    const int64_t k0 = static_cast<int64_t>(tile) * kBc;
    const int kv_rows = static_cast<int>(min(static_cast<int64_t>(kBc), n_keys - k0));
    const bf16* sK = NextKVTile<D, kThreads>(sKV, tile, n_tiles, k, v, hk, Hk, n_keys);
    __syncthreads();  // tile `tile` (and sQ, sO) written by every thread
    const bf16* sV = sK + kBc * kLd;
    float s[kBc / 8][4], dp[kBc / 8][4];  // S = Q K^T, dP = dO V^T
    ProductsNT<D, kBc>(s, dp, sQ, sO, sK, sV, warp * 16, lane);
    // Masked entries (only in a tile past the warp's diagonal, or a partial
    // one) get S = -inf, so P = 0.
    if (k0 + kBc - 1 > offset + q0 + warp * 16 || kv_rows < kBc || rows < kRows) {
      MaskScores<kBc>(s, k0, t, pos_lo, pos_hi, n_keys, ok_lo, ok_hi);
    }
    // dS = P * (dP - delta), P recomputed from lse.
#pragma unroll
    for (int j = 0; j < kBc / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool lo = e < 2;
        const float p = exp2f(s[j][e] * scale_log2 - (lo ? lse_lo : lse_hi));
        dp[j][e] = p * (dp[j][e] - (lo ? del_lo : del_hi));
      }
    }
#pragma unroll
    for (int kk = 0; kk < kBc / 16; ++kk) {
      uint32_t a[4];
      CToA(a, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
      for (int j = 0; j < D / 8; j += 2) {
        uint32_t b[4];
        LoadBN2(b, sK, kk * 16, j * 8, kLd, lane);
        MmaM16N8K16Bf16(acc[j], a, b);
        MmaM16N8K16Bf16(acc[j + 1], a, b + 2);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = half == 0 ? r_lo : r_hi;
    if (r >= rows) continue;
    float* dst = dq + ((q_begin + q0 + r) * H + h) * D;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      dst[j * 8 + 2 * t] += scale * acc[j][2 * half];
      dst[j * 8 + 2 * t + 1] += scale * acc[j][2 * half + 1];
    }
  }
}

// ---------------------------------------------------------------------------
// Backward dk, dv: a block per (key tile of a segment's keys, kv head,
// split); the block loops over its split's share of the kv head's query
// heads and the query tiles that see its keys. One split: the block adds
// its sums into dk / dv, so every element has one writer. More (when the
// key tiles alone are too few blocks to fill the GPU): split z writes its
// partial sums to part_k / part_v[z] ([n_keys, Hk, D] each, overwritten)
// and FlashSumSplitsKernel adds them in split order. No atomics either way.
// ---------------------------------------------------------------------------

// The (query head, query tile) steps are double-buffered: the Q / dO tiles
// of step i + 1 load (by cp.async when QO = bf16, the staged copies) and
// its lse / delta come into registers while step i is multiplied. The
// block's own K / V tiles (staged too) go in step 0's group.
// Three blocks an SM for D <= 64: ptxas then fits the kernel in 168
// registers without spilling (it takes 205 otherwise, two blocks an SM);
// at D 128 the cap spills, so none.
template <int D, typename QO>
__global__ void __launch_bounds__(32 * kDkDvWarps, D <= 64 ? 3 : 1)
    FlashDkDvKernel(float* dk, float* dv, float* part_k, float* part_v, const QO* dout,
                    const QO* q, const float* lse, const float* delta, const QO* k, const QO* v,
                    int64_t q_begin, int64_t offset, int length, int H, int Hk, float scale,
                    float scale_log2) {
  constexpr int kLd = D + 8;
  constexpr int kThreads = 32 * kDkDvWarps;
  static_assert(2 * kBr == kThreads, "a thread per lse / delta value of a query tile");
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + kBc * kLd;
  bf16* sQO = sV + kBc * kLd;  // [2 buffers][Q, dO][kBr][kLd]
  // [2 buffers][lse * log2(e), delta][kBr] per query row
  float* sLD = reinterpret_cast<float*>(sQO + 2 * 2 * kBr * kLd);
  const int hk = blockIdx.y, group = H / Hk, per_split = group / gridDim.z;
  const int64_t key0 = static_cast<int64_t>(blockIdx.x) * kBc;
  const int64_t n_keys = offset + length;
  const int key_rows = static_cast<int>(min(static_cast<int64_t>(kBc), n_keys - key0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  LoadTile<D, kBc, kThreads>(sK, k + static_cast<int64_t>(hk) * D, key0, key_rows,
                             static_cast<int64_t>(Hk) * D);
  LoadTile<D, kBc, kThreads>(sV, v + static_cast<int64_t>(hk) * D, key0, key_rows,
                             static_cast<int64_t>(Hk) * D);
  const int64_t key_lo = key0 + warp * 16 + g, key_hi = key_lo + 8;
  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    dka[j][0] = dka[j][1] = dka[j][2] = dka[j][3] = 0.0f;
    dva[j][0] = dva[j][1] = dva[j][2] = dva[j][3] = 0.0f;
  }
  // Query rows that can see key0: local rows >= key0 - offset.
  const int first_tile = static_cast<int>(max(static_cast<int64_t>(0), key0 - offset) / kBr);
  const int64_t stride = static_cast<int64_t>(H) * D;
  // Step i: query head hk * group + h0 + i / tiles, query rows from
  // (first_tile + i % tiles) * kBr.
  const int tiles = (length - first_tile * kBr + kBr - 1) / kBr;
  const int h0 = blockIdx.z * per_split, steps = per_split * tiles;
  struct Step {
    int h, q0, rows;  // query head, first query row, query rows
  };
  auto step = [&](int i) {
    const int q0 = (first_tile + i % tiles) * kBr;
    return Step{hk * group + h0 + i / tiles, q0, min(kBr, length - q0)};
  };
  // Thread x's value of step i: lse * log2(e) (x < kBr) or delta of row x % kBr.
  auto stat = [&](int i) {
    const Step st = step(i);
    const int r = threadIdx.x % kBr;
    if (r >= st.rows) return 0.0f;
    const int64_t at = (q_begin + st.q0 + r) * H + st.h;
    return threadIdx.x < kBr ? lse[at] * kLog2e : delta[at];
  };
  auto load_qo = [&](int i, bf16* buf) {
    const Step st = step(i);
    LoadTile<D, kBr, kThreads>(buf, q + static_cast<int64_t>(st.h) * D, q_begin + st.q0, st.rows,
                               stride);
    LoadTile<D, kBr, kThreads>(buf + kBr * kLd, dout + static_cast<int64_t>(st.h) * D,
                               q_begin + st.q0, st.rows, stride);
    CpAsyncCommit();
  };
  load_qo(0, sQO);
  sLD[threadIdx.x] = stat(0);
  for (int i = 0; i < steps; ++i) {
    const Step here = step(i);
    const int q0 = here.q0, rows = here.rows;
    float next = 0.0f;
    if (i + 1 < steps) {
      // Into the other buffers, which every warp left at the end of step i - 1.
      load_qo(i + 1, sQO + ((i + 1) % 2) * 2 * kBr * kLd);
      next = stat(i + 1);
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();  // step i's tiles (and sK / sV) written by every thread
    {
      const bf16* sQ = sQO + (i % 2) * 2 * kBr * kLd;
      const bf16* sO = sQ + kBr * kLd;  // dO
      const float* sL = sLD + (i % 2) * 2 * kBr;
      const float* sD = sL + kBr;
      // S^T = K Q^T and dP^T = V dO^T: this warp's 16 keys x the tile's 64 queries.
      float st[kBr / 8][4], dpt[kBr / 8][4];
      ProductsNT<D, kBr>(st, dpt, sK, sV, sQ, sO, warp * 16, lane);
      // Masked entries (only where the block's last key is past the tile's
      // first query, or in a partial tile) get S^T = -inf, so P^T = 0.
      if (key0 + kBc - 1 > offset + q0 || key_rows < kBc || rows < kBr) {
#pragma unroll
        for (int j = 0; j < kBr / 8; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qi = j * 8 + 2 * t + (e & 1);
            const int64_t key = e < 2 ? key_lo : key_hi;
            if (qi >= rows || key > offset + q0 + qi || key >= n_keys) st[j][e] = -INFINITY;
          }
        }
      }
      // P^T and dS^T = P^T * (dP^T - delta).
#pragma unroll
      for (int j = 0; j < kBr / 8; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int qi = j * 8 + 2 * t + (e & 1);
          const float p = exp2f(st[j][e] * scale_log2 - sL[qi]);
          st[j][e] = p;
          dpt[j][e] = p * (dpt[j][e] - sD[qi]);
        }
      }
      // dV += P^T dO, dK += dS^T Q.
#pragma unroll
      for (int kk = 0; kk < kBr / 16; ++kk) {
        uint32_t ap[4], as[4];
        CToA(ap, st[2 * kk], st[2 * kk + 1]);
        CToA(as, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
        for (int j = 0; j < D / 8; j += 2) {
          uint32_t b[4];
          LoadBN2(b, sO, kk * 16, j * 8, kLd, lane);
          MmaM16N8K16Bf16(dva[j], ap, b);
          MmaM16N8K16Bf16(dva[j + 1], ap, b + 2);
          LoadBN2(b, sQ, kk * 16, j * 8, kLd, lane);
          MmaM16N8K16Bf16(dka[j], as, b);
          MmaM16N8K16Bf16(dka[j + 1], as, b + 2);
        }
      }
    }
    if (i + 1 < steps) sLD[((i + 1) % 2) * 2 * kBr + threadIdx.x] = next;
    __syncthreads();  // every warp is done with step i's buffers before they are refilled
  }
  const int64_t split_stride = n_keys * Hk * D;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t key = half == 0 ? key_lo : key_hi;
    if (key - key0 >= key_rows) continue;
    const int64_t at = (key * Hk + hk) * D;
    if (gridDim.z == 1) {
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        dk[at + j * 8 + 2 * t] += scale * dka[j][2 * half];
        dk[at + j * 8 + 2 * t + 1] += scale * dka[j][2 * half + 1];
        dv[at + j * 8 + 2 * t] += dva[j][2 * half];
        dv[at + j * 8 + 2 * t + 1] += dva[j][2 * half + 1];
      }
    } else {
      float* pk = part_k + blockIdx.z * split_stride + at;
      float* pv = part_v + blockIdx.z * split_stride + at;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        pk[j * 8 + 2 * t] = dka[j][2 * half];
        pk[j * 8 + 2 * t + 1] = dka[j][2 * half + 1];
        pv[j * 8 + 2 * t] = dva[j][2 * half];
        pv[j * 8 + 2 * t + 1] = dva[j][2 * half + 1];
      }
    }
  }
}

// dk[i] += scale * sum_z part_k[z][i], dv[i] += sum_z part_v[z][i] over the
// n elements of a segment's dk / dv, z = 0, 1, ... in order.
__global__ void FlashSumSplitsKernel(float* dk, float* dv, const float* part_k,
                                     const float* part_v, int64_t n, int splits, float scale) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float sk = 0.0f, sv = 0.0f;
  for (int z = 0; z < splits; ++z) {
    sk += part_k[z * n + i];
    sv += part_v[z * n + i];
  }
  dk[i] += scale * sk;
  dv[i] += sv;
}

// ---------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

absl::Status Check(int64_t H, int64_t Hk, int64_t D, const AttentionSegment* segs,
                   int64_t n_segs) {
  if (!flash_attention_supported(D) || H < 1 || Hk < 1 || H % Hk != 0) {
    return absl::InvalidArgumentError(
        "flash attention: n_heads " + std::to_string(H) + ", n_kv_heads " + std::to_string(Hk) +
        ", head_dim " + std::to_string(D) +
        " (need n_heads a multiple of n_kv_heads and head_dim 16, 32, 64 or 128)");
  }
  for (int64_t s = 0; s < n_segs; ++s) {
    if (segs[s].length < 0 || segs[s].offset < 0 || segs[s].q_begin < 0 ||
        segs[s].length > (int64_t{1} << 30)) {
      return absl::InvalidArgumentError("flash attention: segment " + std::to_string(s) +
                                        " has a bad q_begin, offset or length");
    }
    if (!Aligned(segs[s].k) || !Aligned(segs[s].v)) {
      return absl::InvalidArgumentError("flash attention: segment " + std::to_string(s) +
                                        "'s K or V is not 16-byte aligned");
    }
  }
  return absl::OkStatus();
}

// Each pointer 16-byte aligned, or INVALID_ARGUMENT naming the first that
// is not.
absl::Status AlignedArgs(std::initializer_list<std::pair<const char*, const void*>> args) {
  for (const auto& [name, p] : args) {
    if (!Aligned(p)) {
      return absl::InvalidArgumentError(std::string("flash attention: ") + name +
                                        " is not 16-byte aligned");
    }
  }
  return absl::OkStatus();
}

// The backward stages exactly `rows` rows of q and dout: every segment's
// queries must lie inside them.
absl::Status RowsCover(const AttentionSegment* segs, int64_t n_segs, int64_t rows) {
  for (int64_t s = 0; s < n_segs; ++s) {
    if (rows < 0 || segs[s].q_begin + segs[s].length > rows) {
      return absl::InvalidArgumentError(
          "flash attention: segment " + std::to_string(s) + " has queries [" +
          std::to_string(segs[s].q_begin) + ", " +
          std::to_string(segs[s].q_begin + segs[s].length) + ") but q has " +
          std::to_string(rows) + " rows");
    }
  }
  return absl::OkStatus();
}

absl::Status Launched(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorName(e) + ": " +
                             cudaGetErrorString(e));
}

// Shared memory: the query tile(s) once, the streamed tiles twice (double
// buffers).
template <int D, int kWarps>
constexpr int ForwardSmem() {
  return (16 * kWarps + 4 * kBc) * (D + 8) * static_cast<int>(sizeof(bf16));
}
template <int D, int kWarps>
constexpr int DqSmem() {
  return (2 * 16 * kWarps + 4 * kBc) * (D + 8) * static_cast<int>(sizeof(bf16));
}
template <int D>
constexpr int DkDvSmem() {
  return (4 * kBr + 2 * kBc) * (D + 8) * static_cast<int>(sizeof(bf16)) +
         4 * kBr * static_cast<int>(sizeof(float));
}

// The kernels' shared-memory attribute is per device: set it once for each
// device a process launches on (a driver call per launch otherwise), and try
// again after a failure.
template <typename F>
cudaError_t OncePerDevice(F set, std::set<int>* done) {
  static std::mutex mu;
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  std::lock_guard<std::mutex> lock(mu);
  if (done->count(device) > 0) return cudaSuccess;
  const cudaError_t e = set();
  if (e == cudaSuccess) done->insert(device);
  return e;
}
absl::Status AttributeStatus(cudaError_t e, const char* op) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(op) + ": shared memory attribute: " +
                             cudaGetErrorString(e));
}

template <int D, int kWarps, typename T>
std::set<int> forward_attr_set;
template <int D, int kWarps, typename T>
std::set<int> backward_attr_set;

// Query rows per block of the forward and dq kernels, in warps of 16 rows:
// 8 (128 rows) unless CHUNKFLOW_FLASH_QUERY_WARPS says 4 (64 rows), a knob
// for comparing the two (attention_bench, flash_attention_test); read at
// every call.
absl::StatusOr<int> QueryWarps() {
  const char* v = std::getenv("CHUNKFLOW_FLASH_QUERY_WARPS");
  if (v == nullptr || *v == '\0') return 8;
  const std::string s(v);
  if (s == "4" || s == "8") return std::stoi(s);
  return absl::InvalidArgumentError("CHUNKFLOW_FLASH_QUERY_WARPS must be 4 or 8, got '" + s + "'");
}

// Staging: the streamed operands (K and V in the forward and dq kernels, Q
// and dO in the dk/dv kernel) are copied to bf16 once per call, so the
// kernels load half the bytes and load them by cp.async, under the
// products. CHUNKFLOW_FLASH_STAGING=0 turns it off (the kernels then convert
// fp32 tiles as they load them, and need no staging workspace): a knob for
// attention_bench and the tests; read at every call.
absl::StatusOr<bool> Staging() {
  const char* v = std::getenv("CHUNKFLOW_FLASH_STAGING");
  if (v == nullptr || *v == '\0') return true;
  const std::string s(v);
  if (s == "0" || s == "1") return s == "1";
  return absl::InvalidArgumentError("CHUNKFLOW_FLASH_STAGING must be 0 or 1, got '" + s + "'");
}

// dst_y[0..n) = bf16(src_y[0..n)) for y = blockIdx.y in {0, 1}: two
// arrays (K and V, Q and dO) in one launch; n a multiple of 4, all 16-byte
// aligned.
__global__ void ToBf16Kernel(bf16* dst0, const float* src0, bf16* dst1, const float* src1,
                             int64_t n) {
  const int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  bf16* dst = blockIdx.y == 0 ? dst0 : dst1;
  const float* src = blockIdx.y == 0 ? src0 : src1;
  const float4 x = *reinterpret_cast<const float4*>(src + i);
  uint2 packed;
  packed.x = Pack(x.x, x.y);
  packed.y = Pack(x.z, x.w);
  *reinterpret_cast<uint2*>(dst + i) = packed;
}

absl::Status ToBf16(bf16* dst0, const float* src0, bf16* dst1, const float* src1, int64_t n,
                    cudaStream_t stream, const char* what) {
  if (n == 0) return absl::OkStatus();
  const int64_t threads = n / 4;
  ToBf16Kernel<<<dim3(static_cast<unsigned>((threads + 255) / 256), 2), 256, 0, stream>>>(
      dst0, src0, dst1, src1, n);
  return Launched(what);
}

// A segment's K and V as a kernel of element type KV reads them: staged
// into sk / sv (bf16; kv_width = n_kv_heads * head_dim per key), or the
// segment's own fp32 arrays.
template <typename KV>
absl::Status SegmentKV(const AttentionSegment& g, int64_t kv_width, bf16* sk, bf16* sv,
                       const KV** k, const KV** v, cudaStream_t stream, const char* what) {
  if constexpr (std::is_same_v<KV, bf16>) {
    if (absl::Status st = ToBf16(sk, g.k, sv, g.v, (g.offset + g.length) * kv_width, stream, what);
        !st.ok()) {
      return st;
    }
    *k = sk;
    *v = sv;
  } else {
    *k = g.k;
    *v = g.v;
  }
  return absl::OkStatus();
}

// The most keys any segment has: the staged K / V are sized for it.
int64_t MaxKeys(const AttentionSegment* segs, int64_t n_segs) {
  int64_t m = 0;
  for (int64_t s = 0; s < n_segs; ++s) {
    if (segs[s].length > 0) m = std::max(m, segs[s].offset + segs[s].length);
  }
  return m;
}

// The forward's workspace, in floats: staged K and V (bf16, two per float).
int64_t ForwardWorkspace(const AttentionSegment* segs, int64_t n_segs, int Hk, int D,
                         bool staging) {
  return staging ? MaxKeys(segs, n_segs) * Hk * D : 0;
}

template <int D, int kWarps, typename KV>
absl::Status Forward(float* out, float* lse, const float* q, const AttentionSegment* segs,
                     int64_t n_segs, int H, int Hk, bf16* staged, cudaStream_t stream) {
  const float scale_log2 = kLog2e / std::sqrt(static_cast<float>(D));
  constexpr int kRows = 16 * kWarps;
  const cudaError_t attr = OncePerDevice(
      [] {
        return cudaFuncSetAttribute(FlashForwardKernel<D, kWarps, KV>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    ForwardSmem<D, kWarps>());
      },
      &forward_attr_set<D, kWarps, KV>);
  if (absl::Status st = AttributeStatus(attr, "flash_attention_forward"); !st.ok()) return st;
  bf16* staged_v = staged + MaxKeys(segs, n_segs) * Hk * D;
  for (int64_t s = 0; s < n_segs; ++s) {
    const AttentionSegment& g = segs[s];
    if (g.length == 0) continue;
    const KV* k = nullptr;
    const KV* v = nullptr;
    if (absl::Status st = SegmentKV(g, Hk * D, staged, staged_v, &k, &v, stream,
                                    "flash_attention_forward stage K/V");
        !st.ok()) {
      return st;
    }
    const unsigned tiles = static_cast<unsigned>((g.length + kRows - 1) / kRows);
    FlashForwardKernel<D, kWarps, KV><<<dim3(tiles, static_cast<unsigned>(H)), 32 * kWarps,
                                        ForwardSmem<D, kWarps>(), stream>>>(
        out, lse, q, k, v, g.q_begin, g.offset, static_cast<int>(g.length), H, Hk, scale_log2);
    if (absl::Status st = Launched("flash_attention_forward"); !st.ok()) return st;
  }
  return absl::OkStatus();
}

// Multiprocessors of the current device, asked once per device.
absl::StatusOr<int> Multiprocessors() {
  static std::mutex mu;
  static std::map<int, int> known;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    return absl::InternalError("flash attention: cudaGetDevice failed");
  }
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(device);
  if (it != known.end()) return it->second;
  int n = 0;
  const cudaError_t e = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess || n < 1) {
    return absl::InternalError("flash attention: multiprocessor count of device " +
                               std::to_string(device) + ": " + std::to_string(n) + " (" +
                               cudaGetErrorString(e) + ")");
  }
  known[device] = n;
  return n;
}

// How many blocks share a key tile's query heads in the dk/dv kernel (a
// divisor of group = n_heads / n_kv_heads). CHUNKFLOW_FLASH_DKDV_SPLITS
// fixes it for every segment (a knob for attention_bench and the tests;
// read at every call): ForcedDkDvSplits returns it, or 0 when unset.
absl::StatusOr<int> ForcedDkDvSplits(int group) {
  const char* v = std::getenv("CHUNKFLOW_FLASH_DKDV_SPLITS");
  if (v == nullptr || *v == '\0') return 0;
  const std::string s(v);
  int n = 0;
  if (!absl::SimpleAtoi(s, &n) || n < 1 || group % n != 0) {
    return absl::InvalidArgumentError(
        "CHUNKFLOW_FLASH_DKDV_SPLITS must divide n_heads / n_kv_heads = " +
        std::to_string(group) + ", got '" + s + "'");
  }
  return n;
}

// Otherwise: 1 when the segment's key tiles alone give 4 blocks per
// multiprocessor, else the smallest divisor that does (or group).
int AutoDkDvSplits(int64_t n_keys, int Hk, int group, int multiprocessors) {
  const int64_t blocks = (n_keys + kBc - 1) / kBc * Hk, target = 4 * int64_t{multiprocessors};
  for (int d = 1; d < group; ++d) {
    if (group % d == 0 && blocks * d >= target) return d;
  }
  return group;
}

// The backward's workspace, in floats, in this order:
//   delta (rows * H, rounded up to 16 bytes);
//   staging on: Q and dO in bf16 (rows * H * D each), then K and V in bf16
//   (MaxKeys * Hk * D each), two bf16 per float;
//   the dk/dv kernel's partial sums, for the segment that needs most (2 *
//   splits * n_keys * Hk * D where it splits).
struct BackwardLayout {
  // Offsets in floats: staged_k / staged_v are K's and V's bf16 copies.
  int64_t delta = 0, staged_qo = 0, staged_k = 0, staged_v = 0, parts = 0, total = 0;
  bool staging = false;
  std::vector<int> splits;  // per segment
};

int64_t DeltaFloats(int64_t rows, int H) { return (rows * H + 3) / 4 * 4; }

absl::StatusOr<BackwardLayout> Layout(const AttentionSegment* segs, int64_t n_segs, int H, int Hk,
                                      int D, int64_t rows) {
  BackwardLayout l;
  const absl::StatusOr<bool> staging = Staging();
  if (!staging.ok()) return staging.status();
  l.staging = *staging;
  l.staged_qo = DeltaFloats(rows, H);
  const int64_t kv_floats = l.staging ? MaxKeys(segs, n_segs) * Hk * D / 2 : 0;  // each
  l.staged_k = l.staged_qo + (l.staging ? rows * H * D : 0);
  l.staged_v = l.staged_k + kv_floats;
  l.parts = l.staged_v + kv_floats;
  const absl::StatusOr<int> forced = ForcedDkDvSplits(H / Hk);
  if (!forced.ok()) return forced.status();
  int sms = 0;
  if (*forced == 0 && n_segs > 0) {
    const absl::StatusOr<int> m = Multiprocessors();
    if (!m.ok()) return m.status();
    sms = *m;
  }
  int64_t parts = 0;
  for (int64_t s = 0; s < n_segs; ++s) {
    const int64_t n_keys = segs[s].offset + segs[s].length;
    const int z = *forced > 0 ? *forced : AutoDkDvSplits(n_keys, Hk, H / Hk, sms);
    l.splits.push_back(z);
    if (z > 1 && segs[s].length > 0) parts = std::max(parts, 2 * z * n_keys * Hk * D);
  }
  l.total = l.parts + parts;
  return l;
}

template <int D, int kWarps, typename T>
absl::Status Backward(float* dq, const AttentionSegment* segs, int64_t n_segs, const float* dout,
                      const float* q, const float* lse, float* workspace,
                      const BackwardLayout& layout, int64_t rows, int H, int Hk,
                      cudaStream_t stream) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float scale_log2 = kLog2e * scale;
  constexpr int kRows = 16 * kWarps;
  const cudaError_t attr = OncePerDevice(
      [] {
        const cudaError_t a = cudaFuncSetAttribute(FlashDqKernel<D, kWarps, T>,
                                                   cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                   DqSmem<D, kWarps>());
        return a != cudaSuccess ? a
                                : cudaFuncSetAttribute(FlashDkDvKernel<D, T>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       DkDvSmem<D>());
      },
      &backward_attr_set<D, kWarps, T>);
  if (absl::Status st = AttributeStatus(attr, "flash_attention_backward"); !st.ok()) return st;
  const float* delta = workspace + layout.delta;
  float* parts = workspace + layout.parts;
  const T* q_in = nullptr;
  const T* dout_in = nullptr;
  bf16* staged_k = reinterpret_cast<bf16*>(workspace + layout.staged_k);
  bf16* staged_v = reinterpret_cast<bf16*>(workspace + layout.staged_v);
  if constexpr (std::is_same_v<T, bf16>) {
    bf16* sq = reinterpret_cast<bf16*>(workspace + layout.staged_qo);
    bf16* so = sq + rows * H * D;
    if (absl::Status st =
            ToBf16(sq, q, so, dout, rows * H * D, stream, "flash_attention_backward stage Q/dO");
        !st.ok()) {
      return st;
    }
    q_in = sq;
    dout_in = so;
  } else {
    q_in = q;
    dout_in = dout;
  }
  for (int64_t s = 0; s < n_segs; ++s) {
    const AttentionSegment& g = segs[s];
    if (g.length == 0) continue;
    const int64_t n_keys = g.offset + g.length;
    const T* k = nullptr;
    const T* v = nullptr;
    if (absl::Status st = SegmentKV(g, Hk * D, staged_k, staged_v, &k, &v, stream,
                                    "flash_attention_backward stage K/V");
        !st.ok()) {
      return st;
    }
    const unsigned q_tiles = static_cast<unsigned>((g.length + kRows - 1) / kRows);
    FlashDqKernel<D, kWarps, T><<<dim3(q_tiles, static_cast<unsigned>(H)), 32 * kWarps,
                                  DqSmem<D, kWarps>(), stream>>>(
        dq, dout_in, q_in, lse, delta, k, v, g.q_begin, g.offset, static_cast<int>(g.length), H,
        Hk, scale, scale_log2);
    if (absl::Status st = Launched("flash_attention_backward dq"); !st.ok()) return st;
    const unsigned k_tiles = static_cast<unsigned>((n_keys + kBc - 1) / kBc);
    const int z = layout.splits[s];
    float* part_k = z > 1 ? parts : nullptr;
    float* part_v = z > 1 ? parts + z * n_keys * Hk * D : nullptr;
    FlashDkDvKernel<D, T><<<dim3(k_tiles, static_cast<unsigned>(Hk), static_cast<unsigned>(z)),
                            32 * kDkDvWarps, DkDvSmem<D>(), stream>>>(
        g.dk, g.dv, part_k, part_v, dout_in, q_in, lse, delta, k, v, g.q_begin, g.offset,
        static_cast<int>(g.length), H, Hk, scale, scale_log2);
    if (absl::Status st = Launched("flash_attention_backward dk dv"); !st.ok()) return st;
    if (z > 1) {
      const int64_t n = n_keys * Hk * D;
      FlashSumSplitsKernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, stream>>>(
          g.dk, g.dv, part_k, part_v, n, z, scale);
      if (absl::Status st = Launched("flash_attention_backward dk dv sum"); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

// Forward / Backward for the query warps and staging chosen at run time.
template <int D>
absl::Status ForwardFor(int warps, bool staging, float* out, float* lse, const float* q,
                        const AttentionSegment* segs, int64_t n_segs, int H, int Hk, bf16* staged,
                        cudaStream_t stream) {
  if (staging) {
    return warps == 4 ? Forward<D, 4, bf16>(out, lse, q, segs, n_segs, H, Hk, staged, stream)
                      : Forward<D, 8, bf16>(out, lse, q, segs, n_segs, H, Hk, staged, stream);
  }
  return warps == 4 ? Forward<D, 4, float>(out, lse, q, segs, n_segs, H, Hk, staged, stream)
                    : Forward<D, 8, float>(out, lse, q, segs, n_segs, H, Hk, staged, stream);
}
template <int D>
absl::Status BackwardFor(int warps, float* dq, const AttentionSegment* segs, int64_t n_segs,
                         const float* dout, const float* q, const float* lse, float* workspace,
                         const BackwardLayout& l, int64_t rows, int H, int Hk,
                         cudaStream_t stream) {
  if (l.staging) {
    return warps == 4 ? Backward<D, 4, bf16>(dq, segs, n_segs, dout, q, lse, workspace, l, rows,
                                             H, Hk, stream)
                      : Backward<D, 8, bf16>(dq, segs, n_segs, dout, q, lse, workspace, l, rows,
                                             H, Hk, stream);
  }
  return warps == 4 ? Backward<D, 4, float>(dq, segs, n_segs, dout, q, lse, workspace, l, rows, H,
                                            Hk, stream)
                    : Backward<D, 8, float>(dq, segs, n_segs, dout, q, lse, workspace, l, rows, H,
                                            Hk, stream);
}

}  // namespace

bool flash_attention_supported(int64_t head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128;
}

absl::StatusOr<int64_t> flash_attention_forward_workspace(const AttentionSegment* segs,
                                                          int64_t n_segs, int64_t n_heads,
                                                          int64_t n_kv_heads, int64_t head_dim) {
  if (absl::Status s = Check(n_heads, n_kv_heads, head_dim, segs, n_segs); !s.ok()) return s;
  const absl::StatusOr<bool> staging = Staging();
  if (!staging.ok()) return staging.status();
  return ForwardWorkspace(segs, n_segs, static_cast<int>(n_kv_heads), static_cast<int>(head_dim),
                          *staging);
}

absl::Status flash_attention_forward(float* out, float* lse, const float* q,
                                     const AttentionSegment* segs, int64_t n_segs,
                                     int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                     float* workspace, int64_t workspace_floats,
                                     cudaStream_t stream) {
  if (absl::Status s = Check(n_heads, n_kv_heads, head_dim, segs, n_segs); !s.ok()) return s;
  if (absl::Status s = AlignedArgs({{"q", q}, {"the workspace", workspace}}); !s.ok()) return s;
  const absl::StatusOr<int> w = QueryWarps();
  if (!w.ok()) return w.status();
  const int H = static_cast<int>(n_heads), Hk = static_cast<int>(n_kv_heads);
  const int D = static_cast<int>(head_dim);
  const absl::StatusOr<bool> staging = Staging();
  if (!staging.ok()) return staging.status();
  const int64_t need = ForwardWorkspace(segs, n_segs, Hk, D, *staging);
  if (workspace_floats < need) {
    return absl::InvalidArgumentError(
        "flash attention: the forward's workspace has " + std::to_string(workspace_floats) +
        " floats, these segments need " + std::to_string(need) +
        " (flash_attention_forward_workspace)");
  }
  bf16* staged = reinterpret_cast<bf16*>(workspace);
  switch (D) {
    case 16: return ForwardFor<16>(*w, *staging, out, lse, q, segs, n_segs, H, Hk, staged, stream);
    case 32: return ForwardFor<32>(*w, *staging, out, lse, q, segs, n_segs, H, Hk, staged, stream);
    case 64: return ForwardFor<64>(*w, *staging, out, lse, q, segs, n_segs, H, Hk, staged, stream);
    default:
      return ForwardFor<128>(*w, *staging, out, lse, q, segs, n_segs, H, Hk, staged, stream);
  }
}

absl::StatusOr<int64_t> flash_attention_backward_workspace(const AttentionSegment* segs,
                                                           int64_t n_segs, int64_t n_heads,
                                                           int64_t n_kv_heads, int64_t head_dim,
                                                           int64_t rows) {
  if (absl::Status s = Check(n_heads, n_kv_heads, head_dim, segs, n_segs); !s.ok()) return s;
  if (absl::Status s = RowsCover(segs, n_segs, rows); !s.ok()) return s;
  const absl::StatusOr<BackwardLayout> l =
      Layout(segs, n_segs, static_cast<int>(n_heads), static_cast<int>(n_kv_heads),
             static_cast<int>(head_dim), rows);
  if (!l.ok()) return l.status();
  return l->total;
}

absl::Status flash_attention_backward(float* dq, const AttentionSegment* segs, int64_t n_segs,
                                      const float* dout, const float* q, const float* out,
                                      const float* lse, int64_t n_heads, int64_t n_kv_heads,
                                      int64_t head_dim, int64_t rows, float* workspace,
                                      int64_t workspace_floats, cudaStream_t stream) {
  if (absl::Status s = Check(n_heads, n_kv_heads, head_dim, segs, n_segs); !s.ok()) return s;
  if (absl::Status s = AlignedArgs({{"q", q}, {"dout", dout}, {"the workspace", workspace}});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = RowsCover(segs, n_segs, rows); !s.ok()) return s;
  const absl::StatusOr<int> w = QueryWarps();
  if (!w.ok()) return w.status();
  const int H = static_cast<int>(n_heads), Hk = static_cast<int>(n_kv_heads);
  const absl::StatusOr<BackwardLayout> layout =
      Layout(segs, n_segs, H, Hk, static_cast<int>(head_dim), rows);
  if (!layout.ok()) return layout.status();
  if (workspace_floats < layout->total) {
    return absl::InvalidArgumentError(
        "flash attention: the backward's workspace has " + std::to_string(workspace_floats) +
        " floats, these segments need " + std::to_string(layout->total) +
        " (flash_attention_backward_workspace)");
  }
  const int64_t n = rows * n_heads;
  if (n > 0) {
    const int64_t threads = n * 32;
    FlashDeltaKernel<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(
        workspace + layout->delta, dout, out, n, static_cast<int>(head_dim));
    if (absl::Status st = Launched("flash_attention_backward delta"); !st.ok()) return st;
  }
  switch (head_dim) {
    case 16:
      return BackwardFor<16>(*w, dq, segs, n_segs, dout, q, lse, workspace, *layout, rows, H, Hk,
                             stream);
    case 32:
      return BackwardFor<32>(*w, dq, segs, n_segs, dout, q, lse, workspace, *layout, rows, H, Hk,
                             stream);
    case 64:
      return BackwardFor<64>(*w, dq, segs, n_segs, dout, q, lse, workspace, *layout, rows, H, Hk,
                             stream);
    default:
      return BackwardFor<128>(*w, dq, segs, n_segs, dout, q, lse, workspace, *layout, rows, H, Hk,
                              stream);
  }
}

}  // namespace chunkflow::kernels::cuda
