// Kernels of ops.h. Grid-stride loops; 256 threads per block unless noted.
#include "kernels/cuda/ops.h"

#include <cmath>

namespace chunkflow::kernels::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > 65535 * 8 ? 65535 * 8 : b));
}

__global__ void EmbeddingForwardKernel(float* out, const int32_t* tokens, const float* wte,
                                       int64_t T, int64_t C) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < T * C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / C, c = i % C;
    out[i] = wte[static_cast<int64_t>(tokens[t]) * C + c];
  }
}

__global__ void EmbeddingBackwardKernel(float* dwte, const float* dout, const int32_t* tokens,
                                        int64_t T, int64_t C) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    for (int64_t t = 0; t < T; ++t) {
      dwte[static_cast<int64_t>(tokens[t]) * C + c] += dout[t * C + c];
    }
  }
}

// Block-wide sum of one double per thread, in a fixed tree order.
__device__ double BlockSum(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const double total = shared[0];
  __syncthreads();
  return total;
}

// An fp32 result stored as Out: itself, or rounded to nearest even.
__device__ inline float Narrow(float v, float*) { return v; }
__device__ inline __nv_bfloat16 Narrow(float v, __nv_bfloat16*) { return __float2bfloat16_rn(v); }
// An input widened to fp32 (exact).
__device__ inline float Widen(float v) { return v; }
__device__ inline float Widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// One block per row. Out float: rmsnorm_forward; bf16: the same values
// rounded (rmsnorm_forward_bf16).
template <typename Out>
__global__ void RmsnormForwardKernel(Out* out, float* rstd, const float* inp,
                                     const float* weight, int64_t C, float eps) {
  __shared__ double shared[kThreads];
  const int64_t t = blockIdx.x;
  const float* x = inp + t * C;
  Out* y = out + t * C;
  double ss = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += static_cast<double>(x[c]) * x[c];
  ss = BlockSum(ss, shared);
  const float r = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(C) + eps));
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    y[c] = Narrow(weight[c] * (x[c] * r), y);
  }
  if (threadIdx.x == 0) rstd[t] = r;
}

__global__ void RmsnormBackwardInputKernel(float* dinp, const float* dout, const float* inp,
                                           const float* weight, const float* rstd, int64_t C) {
  __shared__ double shared[kThreads];
  const int64_t t = blockIdx.x;
  const float* x = inp + t * C;
  const float* dy = dout + t * C;
  float* dx = dinp + t * C;
  const float r = rstd[t];
  double dot = 0.0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    dot += static_cast<double>(dy[c]) * weight[c] * x[c];
  }
  dot = BlockSum(dot, shared);
  const float k = static_cast<float>(dot / static_cast<double>(C)) * r * r;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dx[c] += r * (dy[c] * weight[c] - x[c] * k);
}

// out[c] += sum_t f(t, c) in double, deterministic: a block of 32 x 32
// threads owns 32 columns; row lane y sums rows y, y + 32, ... in order, then
// one thread per column adds the 32 lane sums in lane order. (One thread per
// column walking every row - the CPU's order - left most of the GPU idle and
// took milliseconds per call at 8K rows.)
constexpr int kColumnLanes = 32;

template <typename F>
__global__ void ColumnReduceKernel(float* out, int64_t T, int64_t C, F f) {
  __shared__ double part[kColumnLanes][kColumnLanes + 1];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumnLanes + threadIdx.x;
  double acc = 0.0;
  if (c < C) {
    for (int64_t t = threadIdx.y; t < T; t += kColumnLanes) acc += f(t, c);
  }
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    double s = 0.0;
    for (int y = 0; y < kColumnLanes; ++y) s += part[y][threadIdx.x];
    out[c] += static_cast<float>(s);
  }
}

template <typename F>
cudaError_t LaunchColumnReduce(float* out, int64_t T, int64_t C, F f, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((C + kColumnLanes - 1) / kColumnLanes);
  ColumnReduceKernel<<<blocks, dim3(kColumnLanes, kColumnLanes), 0, stream>>>(out, T, C, f);
  return cudaGetLastError();
}

struct RmsnormWeightTerm {
  const float* dout;
  const float* inp;
  const float* rstd;
  int64_t C;
  __device__ double operator()(int64_t t, int64_t c) const {
    return static_cast<double>(dout[t * C + c]) * (inp[t * C + c] * rstd[t]);
  }
};

struct ColumnTerm {
  const float* x;
  int64_t C;
  __device__ double operator()(int64_t t, int64_t c) const { return x[t * C + c]; }
};

struct ColumnTermBf16 {
  const __nv_bfloat16* x;
  int64_t C;
  __device__ double operator()(int64_t t, int64_t c) const {
    return __bfloat162float(x[t * C + c]);
  }
};

// A block per token group, a thread per column: the group's rows in order,
// added one by one into dwte (the CPU twin's sequence of fp32 additions).
__global__ void EmbeddingBackwardGroupedKernel(float* dwte, const float* dout,
                                               const int32_t* rows, const int32_t* begin,
                                               const int32_t* token, int64_t C) {
  const int64_t g = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float* dst = dwte + static_cast<int64_t>(token[g]) * C + c;
  float acc = *dst;
  for (int32_t i = begin[g]; i < begin[g + 1]; ++i) {
    acc = __fadd_rn(acc, dout[static_cast<int64_t>(rows[i]) * C + c]);
  }
  *dst = acc;
}

__device__ float BlockMax(float v, float* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] = fmaxf(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  const float m = shared[0];
  __syncthreads();
  return m;
}

// Row max and sum of exp(x - max) (fp32 expf, double sum), as the CPU twin.
__device__ void RowStats(const float* x, int64_t V, float* max_out, double* sum_out) {
  __shared__ float fshared[kThreads];
  __shared__ double dshared[kThreads];
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) m = fmaxf(m, x[v]);
  m = BlockMax(m, fshared);
  double s = 0.0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) s += static_cast<double>(expf(x[v] - m));
  *sum_out = BlockSum(s, dshared);
  *max_out = m;
}

__global__ void CrossEntropyForwardKernel(float* losses, const float* logits,
                                          const int32_t* targets, int64_t V) {
  const int64_t t = blockIdx.x;
  const int32_t target = targets[t];
  if (target == kIgnoreIndex) {  // uniform per block: no thread skips a barrier alone
    if (threadIdx.x == 0) losses[t] = 0.0f;
    return;
  }
  const float* x = logits + t * V;
  float m;
  double s;
  RowStats(x, V, &m, &s);
  if (threadIdx.x == 0) {
    losses[t] = static_cast<float>(log(s) + (static_cast<double>(m) - static_cast<double>(x[target])));
  }
}

__global__ void CrossEntropyBackwardKernel(float* dlogits, const float* logits,
                                           const int32_t* targets, const float* dlosses,
                                           int64_t V) {
  const int64_t t = blockIdx.x;
  const int32_t target = targets[t];
  if (target == kIgnoreIndex) return;
  const float* x = logits + t * V;
  float* dx = dlogits + t * V;
  float m;
  double s;
  RowStats(x, V, &m, &s);
  const float inv_sum = static_cast<float>(1.0 / s);
  const float d = dlosses[t];
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float p = expf(x[v] - m) * inv_sum;
    dx[v] += v == target ? d * (p - 1.0f) : d * p;
  }
}

// The head's loss and softmax gradient in one pass: the row's logits are
// read once for the stats, then each thread writes dloss * (softmax -
// onehot) for the elements it reads - in place (Out float, dlogits ==
// logits: the target logit is read by every thread before RowStats'
// barriers, so no write can race it), or rounded into a separate bf16 tile.
template <typename Out>
__global__ void CrossEntropyFusedKernel(float* losses, Out* dlogits, const float* logits,
                                        const int32_t* targets, float dloss, int64_t V) {
  const int64_t t = blockIdx.x;
  const int32_t target = targets[t];
  const float* x = logits + t * V;
  Out* dx = dlogits + t * V;
  if (target == kIgnoreIndex) {  // uniform per block
    for (int64_t v = threadIdx.x; v < V; v += blockDim.x) dx[v] = Narrow(0.0f, dx);
    if (losses != nullptr && threadIdx.x == 0) losses[t] = 0.0f;
    return;
  }
  const float xt = x[target];
  float m;
  double s;
  RowStats(x, V, &m, &s);
  if (losses != nullptr && threadIdx.x == 0) {
    losses[t] = static_cast<float>(log(s) + (static_cast<double>(m) - static_cast<double>(xt)));
  }
  const float inv_sum = static_cast<float>(1.0 / s);
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float p = expf(x[v] - m) * inv_sum;
    dx[v] = Narrow(v == target ? dloss * (p - 1.0f) : dloss * p, dx);
  }
}

__global__ void AddToKernel(float* dst, const float* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] += src[i];
  }
}

struct InvFreq {
  float v[kMaxRopeHeadDim / 2];
};

// One thread per (t, h, i < half): reads both halves before writing (in place).
template <bool kBackward>
__global__ void RopeKernel(float* out, const float* inp, const int64_t* positions, int64_t T,
                           int64_t n_heads, int64_t head_dim, InvFreq inv_freq) {
  const int64_t half = head_dim / 2;
  const int64_t total = T * n_heads * half;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k % half;
    const int64_t th = k / half;  // t * n_heads + h
    const int64_t t = th / n_heads;
    const float angle = static_cast<float>(positions[t]) * inv_freq.v[i];
    const float c = cosf(angle), s = sinf(angle);
    const float* x = inp + th * head_dim;
    float* y = out + th * head_dim;
    const float x1 = x[i], x2 = x[i + half];
    if (kBackward) {
      y[i] += x1 * c + x2 * s;
      y[i + half] += x2 * c - x1 * s;
    } else {
      y[i] = x1 * c - x2 * s;
      y[i + half] = x2 * c + x1 * s;
    }
  }
}

__device__ float Sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// SwiGLU's element arithmetic, shared by the fp32 kernels and their bf16
// fusions so that these equal the fp32 op plus a rounding bit for bit.
__device__ inline float SwigluValue(float g, float u) { return g * Sigmoid(g) * u; }
__device__ inline void SwigluAccumulate(float dout, float g, float u, float& dg, float& du) {
  const float s = Sigmoid(g);
  const float silu = g * s;
  const float dsilu = s * (1.0f + g * (1.0f - s));
  dg += dout * u * dsilu;
  du += dout * silu;
}

__global__ void SwigluForwardKernel(float* out, const float* gate, const float* up, int64_t N) {
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[n] = SwigluValue(gate[n], up[n]);
  }
}

__global__ void SwigluBackwardKernel(float* dgate, float* dup, const float* dout, const float* gate,
                                     const float* up, int64_t N) {
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    SwigluAccumulate(dout[n], gate[n], up[n], dgate[n], dup[n]);
  }
}

// swiglu_forward_bf16: In is float (gate16 / up16, when not null, get the
// inputs rounded: the bf16 activation storage) or bf16 (widened first).
template <typename In>
__global__ void SwigluForwardBf16Kernel(__nv_bfloat16* out, __nv_bfloat16* gate16,
                                        __nv_bfloat16* up16, const In* gate, const In* up,
                                        int64_t N) {
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = Widen(gate[n]), u = Widen(up[n]);
    out[n] = __float2bfloat16_rn(SwigluValue(g, u));
    if (gate16 != nullptr) gate16[n] = __float2bfloat16_rn(g);
    if (up16 != nullptr) up16[n] = __float2bfloat16_rn(u);
  }
}

// swiglu_backward_bf16: the fp32 backward onto zeros, rounded.
template <typename In>
__global__ void SwigluBackwardBf16Kernel(__nv_bfloat16* dgate, __nv_bfloat16* dup,
                                         const float* dout, const In* gate, const In* up,
                                         int64_t N) {
  for (int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; n < N;
       n += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float dg = 0.0f, du = 0.0f;
    SwigluAccumulate(dout[n], Widen(gate[n]), Widen(up[n]), dg, du);
    dgate[n] = __float2bfloat16_rn(dg);
    dup[n] = __float2bfloat16_rn(du);
  }
}

__device__ float Lerp(float self, float end, float weight) {
  return weight < 0.5f ? self + weight * (end - self) : end - (end - self) * (1.0f - weight);
}

// The scalars of one AdamW step, formed on the host in double as
// kernels/cpu/optimizer.cc forms them, then rounded to fp32.
struct AdamWScalars {
  float decay;  // 1 - lr * weight_decay (applied where decay is on)
  float neg_step_size, bias_correction2_sqrt, w1, b2, w2, eps;
};

// One element in torch's single-tensor op order (the CPU twin's).
__device__ void AdamWElement(float* params, const float* grads, float* m, float* v, int64_t i,
                             float decay, const AdamWScalars& c) {
  const float g = grads[i];
  float p = params[i] * decay;
  const float mi = Lerp(m[i], g, c.w1);
  const float vi = v[i] * c.b2 + c.w2 * g * g;
  const float denom = sqrtf(vi) / c.bias_correction2_sqrt + c.eps;
  p = p + c.neg_step_size * mi / denom;
  params[i] = p;
  m[i] = mi;
  v[i] = vi;
}

__global__ void AdamWKernel(float* params, const float* grads, float* m, float* v, int64_t n,
                            AdamWScalars c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    AdamWElement(params, grads, m, v, i, c.decay, c);
  }
}

// grid (chunks, n_spans): blockIdx.y is the tensor, x strides over it. A
// tensor without decay multiplies by 1 (= 1 - lr * 0, as the CPU twin).
__global__ void AdamWMultiKernel(float* params, const float* grads, float* m, float* v,
                                 const TensorSpan* spans, AdamWScalars c) {
  const TensorSpan s = spans[blockIdx.y];
  const float decay = s.decay ? c.decay : 1.0f;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < s.numel;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    AdamWElement(params, grads, m, v, s.offset + k, decay, c);
  }
}

__global__ void SgdKernel(float* params, const float* grads, int64_t n, float neg_lr) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    params[i] = params[i] + neg_lr * grads[i];
  }
}

// Partial sums: block b covers a contiguous range of x.
__global__ void SumOfSquaresPartialKernel(double* partial, const float* x, int64_t n) {
  __shared__ double shared[kThreads];
  const int64_t per_block = (n + gridDim.x - 1) / gridDim.x;
  const int64_t begin = blockIdx.x * per_block;
  const int64_t end = begin + per_block < n ? begin + per_block : n;
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    acc += static_cast<double>(x[i]) * x[i];
  }
  acc = BlockSum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void SumPartialsKernel(double* out, const double* partial, int count) {
  __shared__ double shared[kThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = BlockSum(acc, shared);
  if (threadIdx.x == 0) *out = acc;
}

__global__ void BroadcastRowsKernel(float* out, const float* row, int64_t T, int64_t C) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < T * C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = row[i % C];
  }
}

__global__ void ToBf16Kernel(__nv_bfloat16* out, const float* in, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16_rn(in[i]);
  }
}

__global__ void FromBf16Kernel(float* out, const __nv_bfloat16* in, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __bfloat162float(in[i]);
  }
}

__global__ void ScaleKernel(float* x, int64_t n, float factor) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] *= factor;
  }
}

cudaError_t Launched() { return cudaGetLastError(); }

}  // namespace

cudaError_t embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t T,
                              int64_t C, cudaStream_t stream) {
  if (T * C == 0) return cudaSuccess;
  EmbeddingForwardKernel<<<Blocks(T * C), kThreads, 0, stream>>>(out, tokens, wte, T, C);
  return Launched();
}

cudaError_t embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t T,
                               int64_t C, cudaStream_t stream) {
  if (T * C == 0) return cudaSuccess;
  EmbeddingBackwardKernel<<<Blocks(C), kThreads, 0, stream>>>(dwte, dout, tokens, T, C);
  return Launched();
}

cudaError_t embedding_backward_grouped(float* dwte, const float* dout, const int32_t* rows,
                                       const int32_t* begin, const int32_t* token,
                                       int64_t n_groups, int64_t C, cudaStream_t stream) {
  if (n_groups == 0 || C == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(n_groups), static_cast<unsigned>((C + kThreads - 1) / kThreads));
  EmbeddingBackwardGroupedKernel<<<grid, kThreads, 0, stream>>>(dwte, dout, rows, begin, token, C);
  return Launched();
}

cudaError_t rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight,
                            int64_t T, int64_t C, float eps, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  RmsnormForwardKernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(out, rstd, inp, weight,
                                                                           C, eps);
  return Launched();
}

cudaError_t rmsnorm_forward_bf16(__nv_bfloat16* out, float* rstd, const float* inp,
                                 const float* weight, int64_t T, int64_t C, float eps,
                                 cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  RmsnormForwardKernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(out, rstd, inp, weight,
                                                                           C, eps);
  return Launched();
}

cudaError_t rmsnorm_backward(float* dinp, float* dweight, const float* dout, const float* inp,
                             const float* weight, const float* rstd, int64_t T, int64_t C,
                             cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  RmsnormBackwardInputKernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(
      dinp, dout, inp, weight, rstd, C);
  if (cudaError_t e = Launched(); e != cudaSuccess) return e;
  return LaunchColumnReduce(dweight, T, C, RmsnormWeightTerm{dout, inp, rstd, C}, stream);
}

namespace {

// The CPU twin's inverse frequencies (kernels/cpu/rope.cc), every step fp32.
bool HostInvFreq(int64_t head_dim, float theta, InvFreq* f) {
  if (head_dim <= 0 || head_dim % 2 != 0 || head_dim > kMaxRopeHeadDim) return false;
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    f->v[i] = 1.0f / std::pow(theta, exponent);
  }
  return true;
}

}  // namespace

cudaError_t rope_forward(float* out, const float* inp, const int64_t* positions, int64_t T,
                         int64_t n_heads, int64_t head_dim, float theta, cudaStream_t stream) {
  InvFreq f;
  if (!HostInvFreq(head_dim, theta, &f)) return cudaErrorInvalidValue;
  if (T * n_heads == 0) return cudaSuccess;
  RopeKernel<false><<<Blocks(T * n_heads * head_dim / 2), kThreads, 0, stream>>>(
      out, inp, positions, T, n_heads, head_dim, f);
  return Launched();
}

cudaError_t rope_backward(float* dinp, const float* dout, const int64_t* positions, int64_t T,
                          int64_t n_heads, int64_t head_dim, float theta, cudaStream_t stream) {
  InvFreq f;
  if (!HostInvFreq(head_dim, theta, &f)) return cudaErrorInvalidValue;
  if (T * n_heads == 0) return cudaSuccess;
  RopeKernel<true><<<Blocks(T * n_heads * head_dim / 2), kThreads, 0, stream>>>(
      dinp, dout, positions, T, n_heads, head_dim, f);
  return Launched();
}

cudaError_t cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                                  int64_t T, int64_t V, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  CrossEntropyForwardKernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(losses, logits,
                                                                                targets, V);
  return Launched();
}

cudaError_t cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                   const float* dlosses, int64_t T, int64_t V,
                                   cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  CrossEntropyBackwardKernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(
      dlogits, logits, targets, dlosses, V);
  return Launched();
}

cudaError_t cross_entropy_fused(float* losses, float* logits, const int32_t* targets, float dloss,
                                int64_t T, int64_t V, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  CrossEntropyFusedKernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(
      losses, logits, logits, targets, dloss, V);
  return Launched();
}

cudaError_t cross_entropy_fused_bf16(float* losses, __nv_bfloat16* dlogits, const float* logits,
                                     const int32_t* targets, float dloss, int64_t T, int64_t V,
                                     cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  CrossEntropyFusedKernel<<<static_cast<unsigned>(T), kThreads, 0, stream>>>(
      losses, dlogits, logits, targets, dloss, V);
  return Launched();
}

cudaError_t add_to(float* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  AddToKernel<<<Blocks(n), kThreads, 0, stream>>>(dst, src, n);
  return Launched();
}

cudaError_t swiglu_forward(float* out, const float* gate, const float* up, int64_t N,
                           cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  SwigluForwardKernel<<<Blocks(N), kThreads, 0, stream>>>(out, gate, up, N);
  return Launched();
}

cudaError_t swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate,
                            const float* up, int64_t N, cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  SwigluBackwardKernel<<<Blocks(N), kThreads, 0, stream>>>(dgate, dup, dout, gate, up, N);
  return Launched();
}

namespace {

template <typename In>
cudaError_t LaunchSwigluForwardBf16(__nv_bfloat16* out, __nv_bfloat16* gate16,
                                    __nv_bfloat16* up16, const In* gate, const In* up, int64_t N,
                                    cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  SwigluForwardBf16Kernel<<<Blocks(N), kThreads, 0, stream>>>(out, gate16, up16, gate, up, N);
  return Launched();
}

template <typename In>
cudaError_t LaunchSwigluBackwardBf16(__nv_bfloat16* dgate, __nv_bfloat16* dup, const float* dout,
                                     const In* gate, const In* up, int64_t N,
                                     cudaStream_t stream) {
  if (N == 0) return cudaSuccess;
  SwigluBackwardBf16Kernel<<<Blocks(N), kThreads, 0, stream>>>(dgate, dup, dout, gate, up, N);
  return Launched();
}

}  // namespace

cudaError_t swiglu_forward_bf16(__nv_bfloat16* out, __nv_bfloat16* gate16, __nv_bfloat16* up16,
                                const float* gate, const float* up, int64_t N,
                                cudaStream_t stream) {
  return LaunchSwigluForwardBf16(out, gate16, up16, gate, up, N, stream);
}

cudaError_t swiglu_forward_bf16(__nv_bfloat16* out, const __nv_bfloat16* gate,
                                const __nv_bfloat16* up, int64_t N, cudaStream_t stream) {
  return LaunchSwigluForwardBf16(out, nullptr, nullptr, gate, up, N, stream);
}

cudaError_t swiglu_backward_bf16(__nv_bfloat16* dgate, __nv_bfloat16* dup, const float* dout,
                                 const float* gate, const float* up, int64_t N,
                                 cudaStream_t stream) {
  return LaunchSwigluBackwardBf16(dgate, dup, dout, gate, up, N, stream);
}

cudaError_t swiglu_backward_bf16(__nv_bfloat16* dgate, __nv_bfloat16* dup, const float* dout,
                                 const __nv_bfloat16* gate, const __nv_bfloat16* up, int64_t N,
                                 cudaStream_t stream) {
  return LaunchSwigluBackwardBf16(dgate, dup, dout, gate, up, N, stream);
}

namespace {

AdamWScalars Scalars(const AdamWConfig& cfg, int64_t step) {
  const double lr = cfg.lr;
  const double bias_correction1 = 1.0 - std::pow(static_cast<double>(cfg.beta1), step);
  const double bias_correction2 = 1.0 - std::pow(static_cast<double>(cfg.beta2), step);
  AdamWScalars c;
  c.decay = static_cast<float>(1.0 - lr * cfg.weight_decay);
  c.neg_step_size = static_cast<float>(-(lr / bias_correction1));
  c.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  c.w1 = static_cast<float>(1.0 - static_cast<double>(cfg.beta1));
  c.b2 = cfg.beta2;
  c.w2 = static_cast<float>(1.0 - static_cast<double>(cfg.beta2));
  c.eps = cfg.eps;
  return c;
}

}  // namespace

cudaError_t adamw_update(float* params, const float* grads, float* m, float* v, int64_t n,
                         int64_t step, const AdamWConfig& cfg, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  AdamWKernel<<<Blocks(n), kThreads, 0, stream>>>(params, grads, m, v, n, Scalars(cfg, step));
  return Launched();
}

cudaError_t adamw_update_multi(float* params, const float* grads, float* m, float* v,
                               const TensorSpan* spans, int64_t n_spans, int64_t step,
                               const AdamWConfig& cfg, cudaStream_t stream) {
  if (n_spans == 0) return cudaSuccess;
  if (n_spans > 65535) return cudaErrorInvalidValue;
  AdamWMultiKernel<<<dim3(64, static_cast<unsigned>(n_spans)), kThreads, 0, stream>>>(
      params, grads, m, v, spans, Scalars(cfg, step));
  return Launched();
}

cudaError_t sgd_update(float* params, const float* grads, int64_t n, float lr,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  SgdKernel<<<Blocks(n), kThreads, 0, stream>>>(params, grads, n, -lr);
  return Launched();
}

cudaError_t sum_of_squares(double* out, const float* x, int64_t n, double* scratch,
                           cudaStream_t stream) {
  SumOfSquaresPartialKernel<<<kSumOfSquaresBlocks, kThreads, 0, stream>>>(scratch, x, n);
  if (cudaError_t e = Launched(); e != cudaSuccess) return e;
  SumPartialsKernel<<<1, kThreads, 0, stream>>>(out, scratch, kSumOfSquaresBlocks);
  return Launched();
}

cudaError_t float_to_bf16(__nv_bfloat16* out, const float* in, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ToBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(out, in, n);
  return Launched();
}

cudaError_t bf16_to_float(float* out, const __nv_bfloat16* in, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  FromBf16Kernel<<<Blocks(n), kThreads, 0, stream>>>(out, in, n);
  return Launched();
}

cudaError_t broadcast_rows(float* out, const float* row, int64_t T, int64_t C,
                           cudaStream_t stream) {
  if (T * C == 0) return cudaSuccess;
  BroadcastRowsKernel<<<Blocks(T * C), kThreads, 0, stream>>>(out, row, T, C);
  return Launched();
}

cudaError_t column_sums(float* sums, const float* x, int64_t T, int64_t C, cudaStream_t stream) {
  if (C == 0) return cudaSuccess;
  return LaunchColumnReduce(sums, T, C, ColumnTerm{x, C}, stream);
}

cudaError_t column_sums(float* sums, const __nv_bfloat16* x, int64_t T, int64_t C,
                        cudaStream_t stream) {
  if (C == 0) return cudaSuccess;
  return LaunchColumnReduce(sums, T, C, ColumnTermBf16{x, C}, stream);
}

cudaError_t scale(float* x, int64_t n, float factor, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  ScaleKernel<<<Blocks(n), kThreads, 0, stream>>>(x, n, factor);
  return Launched();
}

}  // namespace chunkflow::kernels::cuda
