#include "kernels/cpu/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace chunkflow::kernels::cpu {
namespace {

// Query rows per score tile: a tile is (kBlock x keys) floats per task.
constexpr int64_t kBlock = 64;

// ---------------------------------------------------------------------------
// Shared tile math
// ---------------------------------------------------------------------------

// Scores of query rows [i0, i0 + bq) of head h against keys [0, nk) of
// segment `sg`: s = scale * q k^T, masked causally (key j > position -> -inf).
void Scores(float* s /*(bq,nk)*/, const AttentionSegment& sg, const float* q, int64_t h,
            int64_t g, int64_t i0, int64_t bq, int64_t nk, int64_t n_heads, int64_t n_kv_heads,
            int64_t d, float scale) {
  const float* qb = q + ((sg.q_begin + i0) * n_heads + h) * d;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(bq), static_cast<int>(nk),
              static_cast<int>(d), scale, qb, static_cast<int>(n_heads * d), sg.k + g * d,
              static_cast<int>(n_kv_heads * d), 0.0f, s, static_cast<int>(nk));
  for (int64_t r = 0; r < bq; ++r) {
    const int64_t visible = sg.offset + i0 + r + 1;  // keys [0, visible)
    std::fill(s + r * nk + visible, s + (r + 1) * nk, -std::numeric_limits<float>::infinity());
  }
}

struct Task {
  int64_t seg;
  int64_t head;  // query head (forward) or kv head (backward)
  int64_t i0;    // first query row of the block (forward only)
};

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

void ForwardBlock(float* out, float* lse, const float* q, const AttentionSegment& sg, int64_t h,
                  int64_t i0, int64_t n_heads, int64_t n_kv_heads, int64_t d,
                  std::vector<float>& s) {
  const int64_t g = h / (n_heads / n_kv_heads);
  const int64_t bq = std::min(kBlock, sg.length - i0);
  const int64_t nk = sg.offset + i0 + bq;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  s.resize(static_cast<size_t>(bq * nk));
  Scores(s.data(), sg, q, h, g, i0, bq, nk, n_heads, n_kv_heads, d, scale);
  for (int64_t r = 0; r < bq; ++r) {
    float* row = s.data() + r * nk;
    const int64_t visible = sg.offset + i0 + r + 1;
    float mx = row[0];
    for (int64_t j = 1; j < visible; ++j) mx = std::max(mx, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < visible; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
    for (int64_t j = visible; j < nk; ++j) row[j] = 0.0f;
    lse[(sg.q_begin + i0 + r) * n_heads + h] = mx + std::log(sum);
  }
  float* ob = out + ((sg.q_begin + i0) * n_heads + h) * d;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(bq), static_cast<int>(d),
              static_cast<int>(nk), 1.0f, s.data(), static_cast<int>(nk), sg.v + g * d,
              static_cast<int>(n_kv_heads * d), 0.0f, ob, static_cast<int>(n_heads * d));
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

// All query heads of kv head g over every query block of one segment: the
// only writer of the segment's dk/dv columns of g.
void BackwardGroup(float* dq, const AttentionSegment& sg, int64_t g, const float* dout,
                   const float* q, const float* out, const float* lse, int64_t n_heads,
                   int64_t n_kv_heads, int64_t d) {
  const int64_t group = n_heads / n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int ldq = static_cast<int>(n_heads * d);
  const int ldk = static_cast<int>(n_kv_heads * d);
  std::vector<float> p, dp;
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t i0 = 0; i0 < sg.length; i0 += kBlock) {
      const int64_t bq = std::min(kBlock, sg.length - i0);
      const int64_t nk = sg.offset + i0 + bq;
      p.resize(static_cast<size_t>(bq * nk));
      dp.resize(static_cast<size_t>(bq * nk));
      Scores(p.data(), sg, q, h, g, i0, bq, nk, n_heads, n_kv_heads, d, scale);
      const int64_t row0 = sg.q_begin + i0;
      for (int64_t r = 0; r < bq; ++r) {
        const float l = lse[(row0 + r) * n_heads + h];
        float* pr = p.data() + r * nk;
        for (int64_t j = 0; j < nk; ++j) pr[j] = std::exp(pr[j] - l);  // exp(-inf) = 0
      }
      const float* dob = dout + (row0 * n_heads + h) * d;
      // dP = dO V^T
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(bq),
                  static_cast<int>(nk), static_cast<int>(d), 1.0f, dob, ldq, sg.v + g * d, ldk,
                  0.0f, dp.data(), static_cast<int>(nk));
      // dV += P^T dO (before P is overwritten by dS)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(nk),
                  static_cast<int>(d), static_cast<int>(bq), 1.0f, p.data(), static_cast<int>(nk),
                  dob, ldq, 1.0f, sg.dv + g * d, ldk);
      // dS = P * (dP - rowsum(dO * O)), kept in p
      for (int64_t r = 0; r < bq; ++r) {
        const float* o = out + ((row0 + r) * n_heads + h) * d;
        const float* dor = dob + r * n_heads * d;
        float delta = 0.0f;
        for (int64_t e = 0; e < d; ++e) delta += dor[e] * o[e];
        float* pr = p.data() + r * nk;
        const float* dpr = dp.data() + r * nk;
        for (int64_t j = 0; j < nk; ++j) pr[j] *= dpr[j] - delta;
      }
      // dQ += scale dS K ; dK += scale dS^T Q
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(bq),
                  static_cast<int>(d), static_cast<int>(nk), scale, p.data(),
                  static_cast<int>(nk), sg.k + g * d, ldk, 1.0f, dq + (row0 * n_heads + h) * d,
                  ldq);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(nk),
                  static_cast<int>(d), static_cast<int>(bq), scale, p.data(),
                  static_cast<int>(nk), q + (row0 * n_heads + h) * d, ldq, 1.0f, sg.dk + g * d,
                  ldk);
    }
  }
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const AttentionSegment* segs,
                       int64_t n_segs, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim) {
  std::vector<Task> tasks;
  for (int64_t s = 0; s < n_segs; ++s) {
    for (int64_t h = 0; h < n_heads; ++h) {
      for (int64_t i0 = 0; i0 < segs[s].length; i0 += kBlock) tasks.push_back({s, h, i0});
    }
  }
  // Longest key ranges first: better dynamic balance.
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& a, const Task& b) {
    return segs[a.seg].offset + a.i0 > segs[b.seg].offset + b.i0;
  });
  const int64_t n = static_cast<int64_t>(tasks.size());
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n; ++t) {
      const Task& tk = tasks[t];
      ForwardBlock(out, lse, q, segs[tk.seg], tk.head, tk.i0, n_heads, n_kv_heads, head_dim,
                   scratch);
    }
  }
}

void attention_backward(float* dq, const AttentionSegment* segs, int64_t n_segs,
                        const float* dout, const float* q, const float* out, const float* lse,
                        int64_t n_heads, int64_t n_kv_heads, int64_t head_dim) {
  std::vector<Task> tasks;
  for (int64_t s = 0; s < n_segs; ++s) {
    if (segs[s].length == 0) continue;
    for (int64_t g = 0; g < n_kv_heads; ++g) tasks.push_back({s, g, 0});
  }
  std::stable_sort(tasks.begin(), tasks.end(), [&](const Task& a, const Task& b) {
    const auto work = [&](const AttentionSegment& sg) { return sg.length * (sg.offset + sg.length); };
    return work(segs[a.seg]) > work(segs[b.seg]);
  });
  const int64_t n = static_cast<int64_t>(tasks.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t t = 0; t < n; ++t) {
    BackwardGroup(dq, segs[tasks[t].seg], tasks[t].head, dout, q, out, lse, n_heads, n_kv_heads,
                  head_dim);
  }
}

}  // namespace chunkflow::kernels::cpu
