// Reference-quality fp32 attention kernels (see attention.h).
#include "kernels/cuda/attention.h"

#include <cmath>
#include <string>

namespace chunkflow::kernels::cuda {
namespace {

constexpr int kThreads = 128;

__device__ float Dot(const float* a, const float* b, int64_t D) {
  float s = 0.0f;
  for (int64_t d = 0; d < D; ++d) s += a[d] * b[d];
  return s;
}

__device__ float BlockReduceMax(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  const float r = shared[0];
  __syncthreads();
  return r;
}

__device__ double BlockReduceSum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const double r = shared[0];
  __syncthreads();
  return r;
}

// acc[slot] += sum_jj w[jj] * rows[(base + jj) * stride + d] for this
// thread's columns d = threadIdx.x + slot * blockDim.x: one row block of a
// weighted sum over keys (probabilities times V, or dS times K).
__device__ void AccumulateRows(float* acc, const float* w, int64_t count, const float* rows,
                               int64_t base, int64_t stride, int64_t D) {
  for (int64_t d = threadIdx.x, slot = 0; d < D; d += blockDim.x, ++slot) {
    float a = acc[slot];
    for (int64_t jj = 0; jj < count; ++jj) a += w[jj] * rows[(base + jj) * stride + d];
    acc[slot] = a;
  }
}

// grid (length, n_heads): query i of the segment, head h.
__global__ void ForwardKernel(float* out, float* lse, const float* q, const float* k,
                              const float* v, int64_t q_begin, int64_t offset, int64_t H,
                              int64_t Hkv, int64_t D, float scale) {
  __shared__ float qs[kMaxAttentionHeadDim];
  __shared__ float probs[kThreads];
  __shared__ float fshared[kThreads];
  __shared__ double dshared[kThreads];
  const int64_t i = blockIdx.x, h = blockIdx.y;
  const int64_t t = q_begin + i;
  const int64_t n_keys = offset + i + 1;
  const int64_t kvh = h / (H / Hkv);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) qs[d] = q[(t * H + h) * D + d];
  __syncthreads();
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < n_keys; j += blockDim.x) {
    m = fmaxf(m, Dot(qs, k + (j * Hkv + kvh) * D, D) * scale);
  }
  m = BlockReduceMax(m, fshared);
  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < n_keys; j += blockDim.x) {
    sum += static_cast<double>(expf(Dot(qs, k + (j * Hkv + kvh) * D, D) * scale - m));
  }
  sum = BlockReduceSum(sum, dshared);
  const float l = m + static_cast<float>(log(sum));
  float acc[kMaxAttentionHeadDim / kThreads] = {};
  for (int64_t base = 0; base < n_keys; base += blockDim.x) {
    const int64_t j = base + threadIdx.x;
    probs[threadIdx.x] = j < n_keys ? expf(Dot(qs, k + (j * Hkv + kvh) * D, D) * scale - l) : 0.0f;
    __syncthreads();
    const int64_t count = n_keys - base < blockDim.x ? n_keys - base : blockDim.x;
    AccumulateRows(acc, probs, count, v + kvh * D, base, Hkv * D, D);
    __syncthreads();
  }
  for (int64_t d = threadIdx.x, slot = 0; d < D; d += blockDim.x, ++slot) {
    out[(t * H + h) * D + d] = acc[slot];
  }
  if (threadIdx.x == 0) lse[t * H + h] = l;
}

// grid (length, n_heads): dq of query i, head h.
__global__ void DqKernel(float* dq, const float* dout, const float* q, const float* out,
                         const float* lse, const float* k, const float* v, int64_t q_begin,
                         int64_t offset, int64_t H, int64_t Hkv, int64_t D, float scale) {
  __shared__ float qs[kMaxAttentionHeadDim];
  __shared__ float dos[kMaxAttentionHeadDim];
  __shared__ float ds[kThreads];
  __shared__ double dshared[kThreads];
  const int64_t i = blockIdx.x, h = blockIdx.y;
  const int64_t t = q_begin + i;
  const int64_t n_keys = offset + i + 1;
  const int64_t kvh = h / (H / Hkv);
  const int64_t row = (t * H + h) * D;
  double di = 0.0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    qs[d] = q[row + d];
    dos[d] = dout[row + d];
    di += static_cast<double>(dout[row + d]) * out[row + d];
  }
  const float Di = static_cast<float>(BlockReduceSum(di, dshared));  // also syncs qs / dos
  const float l = lse[t * H + h];
  float acc[kMaxAttentionHeadDim / kThreads] = {};
  for (int64_t base = 0; base < n_keys; base += blockDim.x) {
    const int64_t j = base + threadIdx.x;
    if (j < n_keys) {
      const float p = expf(Dot(qs, k + (j * Hkv + kvh) * D, D) * scale - l);
      const float dp = Dot(dos, v + (j * Hkv + kvh) * D, D);
      ds[threadIdx.x] = p * (dp - Di);
    } else {
      ds[threadIdx.x] = 0.0f;
    }
    __syncthreads();
    const int64_t count = n_keys - base < blockDim.x ? n_keys - base : blockDim.x;
    AccumulateRows(acc, ds, count, k + kvh * D, base, Hkv * D, D);
    __syncthreads();
  }
  for (int64_t d = threadIdx.x, slot = 0; d < D; d += blockDim.x, ++slot) {
    dq[row + d] += scale * acc[slot];
  }
}

// grid (offset + length, n_kv_heads): dk, dv of key j, kv head g, summed over
// the group's heads and the segment's queries at positions >= j.
__global__ void DkDvKernel(float* dk, float* dv, const float* dout, const float* q,
                           const float* out, const float* lse, const float* k, const float* v,
                           int64_t q_begin, int64_t offset, int64_t length, int64_t H,
                           int64_t Hkv, int64_t D, float scale) {
  __shared__ float ks[kMaxAttentionHeadDim];
  __shared__ float vs[kMaxAttentionHeadDim];
  __shared__ float ps[kThreads];
  __shared__ float dss[kThreads];
  const int64_t j = blockIdx.x, g = blockIdx.y;
  const int64_t group = H / Hkv;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    ks[d] = k[(j * Hkv + g) * D + d];
    vs[d] = v[(j * Hkv + g) * D + d];
  }
  __syncthreads();
  // Queries of this segment that see key j: positions offset + i >= j.
  const int64_t first = j > offset ? j - offset : 0;
  float dk_acc[kMaxAttentionHeadDim / kThreads] = {};
  float dv_acc[kMaxAttentionHeadDim / kThreads] = {};
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t base = first; base < length; base += blockDim.x) {
      const int64_t i = base + threadIdx.x;
      if (i < length) {
        const int64_t row = ((q_begin + i) * H + h) * D;
        const float p = expf(Dot(q + row, ks, D) * scale - lse[(q_begin + i) * H + h]);
        const float dp = Dot(dout + row, vs, D);
        const float Di = Dot(dout + row, out + row, D);
        ps[threadIdx.x] = p;
        dss[threadIdx.x] = p * (dp - Di);
      } else {
        ps[threadIdx.x] = 0.0f;
        dss[threadIdx.x] = 0.0f;
      }
      __syncthreads();
      const int64_t count = length - base < blockDim.x ? length - base : blockDim.x;
      // Rows of query (q_begin + base + ii, head h): stride H * D.
      AccumulateRows(dk_acc, dss, count, q + (q_begin * H + h) * D, base, H * D, D);
      AccumulateRows(dv_acc, ps, count, dout + (q_begin * H + h) * D, base, H * D, D);
      __syncthreads();
    }
  }
  for (int64_t d = threadIdx.x, slot = 0; d < D; d += blockDim.x, ++slot) {
    dk[(j * Hkv + g) * D + d] += scale * dk_acc[slot];
    dv[(j * Hkv + g) * D + d] += dv_acc[slot];
  }
}

absl::Status Check(int64_t H, int64_t Hkv, int64_t D, const AttentionSegment* segs,
                   int64_t n_segs) {
  if (H < 1 || Hkv < 1 || H % Hkv != 0 || D < 1 || D > kMaxAttentionHeadDim) {
    return absl::InvalidArgumentError(
        "attention: n_heads " + std::to_string(H) + ", n_kv_heads " + std::to_string(Hkv) +
        ", head_dim " + std::to_string(D) + " (need n_heads a multiple of n_kv_heads, 1 <= "
        "head_dim <= " + std::to_string(kMaxAttentionHeadDim) + ")");
  }
  for (int64_t s = 0; s < n_segs; ++s) {
    if (segs[s].length < 0 || segs[s].offset < 0 || segs[s].q_begin < 0 ||
        segs[s].length > 65535) {
      return absl::InvalidArgumentError("attention: segment " + std::to_string(s) +
                                        " has a bad q_begin, offset or length (<= 65535)");
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

}  // namespace

absl::Status attention_forward(float* out, float* lse, const float* q,
                               const AttentionSegment* segs, int64_t n_segs, int64_t n_heads,
                               int64_t n_kv_heads, int64_t head_dim, cudaStream_t stream) {
  if (absl::Status s = Check(n_heads, n_kv_heads, head_dim, segs, n_segs); !s.ok()) return s;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t s = 0; s < n_segs; ++s) {
    const AttentionSegment& g = segs[s];
    if (g.length == 0) continue;
    ForwardKernel<<<dim3(static_cast<unsigned>(g.length), static_cast<unsigned>(n_heads)),
                    kThreads, 0, stream>>>(out, lse, q, g.k, g.v, g.q_begin, g.offset, n_heads,
                                           n_kv_heads, head_dim, scale);
    if (absl::Status st = Launched("attention_forward"); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status attention_backward(float* dq, const AttentionSegment* segs, int64_t n_segs,
                                const float* dout, const float* q, const float* out,
                                const float* lse, int64_t n_heads, int64_t n_kv_heads,
                                int64_t head_dim, cudaStream_t stream) {
  if (absl::Status s = Check(n_heads, n_kv_heads, head_dim, segs, n_segs); !s.ok()) return s;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t s = 0; s < n_segs; ++s) {
    const AttentionSegment& g = segs[s];
    if (g.length == 0) continue;
    DqKernel<<<dim3(static_cast<unsigned>(g.length), static_cast<unsigned>(n_heads)), kThreads,
               0, stream>>>(dq, dout, q, out, lse, g.k, g.v, g.q_begin, g.offset, n_heads,
                            n_kv_heads, head_dim, scale);
    if (absl::Status st = Launched("attention_backward dq"); !st.ok()) return st;
    DkDvKernel<<<dim3(static_cast<unsigned>(g.offset + g.length),
                      static_cast<unsigned>(n_kv_heads)),
                 kThreads, 0, stream>>>(g.dk, g.dv, dout, q, out, lse, g.k, g.v, g.q_begin,
                                        g.offset, g.length, n_heads, n_kv_heads, head_dim, scale);
    if (absl::Status st = Launched("attention_backward dk dv"); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace chunkflow::kernels::cuda
