#include "kernels/cpu/attention.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/test_util.h"

namespace chunkflow::kernels::cpu {
namespace {

std::vector<float> Random(int64_t n, uint64_t seed) { return testing::RandomVector(n, seed); }

double RelErr(const std::vector<float>& a, const std::vector<double>& b) {
  return testing::RelativeError(a.data(), b.data(), static_cast<int64_t>(b.size()));
}

// One test problem: `pieces` of (offset, length), each with its own K/V
// buffer of offset + length positions.
struct Problem {
  int64_t h, hk, d;
  std::vector<std::pair<int64_t, int64_t>> pieces;
  int64_t t = 0;
  std::vector<float> q, dout;
  std::vector<std::vector<float>> k, v;

  Problem(int64_t h_, int64_t hk_, int64_t d_, std::vector<std::pair<int64_t, int64_t>> p,
          uint64_t seed)
      : h(h_), hk(hk_), d(d_), pieces(std::move(p)) {
    for (auto& pc : pieces) t += pc.second;
    q = Random(t * h * d, seed);
    dout = Random(t * h * d, seed + 1);
    for (size_t i = 0; i < pieces.size(); ++i) {
      const int64_t n = (pieces[i].first + pieces[i].second) * hk * d;
      k.push_back(Random(n, seed + 10 + i));
      v.push_back(Random(n, seed + 100 + i));
    }
  }

  std::vector<AttentionSegment> Segments(std::vector<std::vector<float>>* dk,
                                         std::vector<std::vector<float>>* dv) const {
    std::vector<AttentionSegment> segs;
    int64_t row = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      AttentionSegment s;
      s.q_begin = row;
      s.offset = pieces[i].first;
      s.length = pieces[i].second;
      s.k = k[i].data();
      s.v = v[i].data();
      if (dk) s.dk = (*dk)[i].data();
      if (dv) s.dv = (*dv)[i].data();
      segs.push_back(s);
      row += s.length;
    }
    return segs;
  }

  // Double-precision reference: out, and the gradients of sum(out .* dout).
  void Reference(std::vector<double>* out, std::vector<double>* dq,
                 std::vector<std::vector<double>>* dk, std::vector<std::vector<double>>* dv) const {
    out->assign(q.size(), 0.0);
    dq->assign(q.size(), 0.0);
    dk->clear();
    dv->clear();
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    int64_t row = 0;
    for (size_t s = 0; s < pieces.size(); ++s) {
      const auto [off, len] = pieces[s];
      dk->emplace_back(k[s].size(), 0.0);
      dv->emplace_back(v[s].size(), 0.0);
      for (int64_t i = 0; i < len; ++i) {
        for (int64_t hh = 0; hh < h; ++hh) {
          const int64_t g = hh / (h / hk);
          const int64_t nk = off + i + 1;
          const float* qi = &q[((row + i) * h + hh) * d];
          std::vector<double> p(nk);
          double mx = -1e300;
          for (int64_t j = 0; j < nk; ++j) {
            double sc = 0;
            for (int64_t e = 0; e < d; ++e) sc += double(qi[e]) * k[s][(j * hk + g) * d + e];
            p[j] = sc * scale;
            mx = std::max(mx, p[j]);
          }
          double sum = 0;
          for (double& x : p) sum += (x = std::exp(x - mx));
          for (double& x : p) x /= sum;
          double* o = &(*out)[((row + i) * h + hh) * d];
          for (int64_t j = 0; j < nk; ++j)
            for (int64_t e = 0; e < d; ++e) o[e] += p[j] * v[s][(j * hk + g) * d + e];
          const float* go = &dout[((row + i) * h + hh) * d];
          double delta = 0;
          for (int64_t e = 0; e < d; ++e) delta += go[e] * o[e];
          for (int64_t j = 0; j < nk; ++j) {
            double dpj = 0;
            for (int64_t e = 0; e < d; ++e) dpj += go[e] * double(v[s][(j * hk + g) * d + e]);
            const double ds = p[j] * (dpj - delta) * scale;
            for (int64_t e = 0; e < d; ++e) {
              (*dq)[((row + i) * h + hh) * d + e] += ds * k[s][(j * hk + g) * d + e];
              (*dk)[s][(j * hk + g) * d + e] += ds * qi[e];
              (*dv)[s][(j * hk + g) * d + e] += p[j] * go[e];
            }
          }
        }
      }
      row += len;
    }
  }
};

struct Result {
  std::vector<float> out, lse, dq;
  std::vector<std::vector<float>> dk, dv;
};

Result RunBoth(const Problem& pb) {
  Result r;
  r.out.assign(pb.q.size(), 0.0f);
  r.lse.assign(pb.t * pb.h, 0.0f);
  r.dq.assign(pb.q.size(), 0.0f);
  for (size_t i = 0; i < pb.pieces.size(); ++i) {
    r.dk.emplace_back(pb.k[i].size(), 0.0f);
    r.dv.emplace_back(pb.v[i].size(), 0.0f);
  }
  std::vector<AttentionSegment> segs = pb.Segments(&r.dk, &r.dv);
  attention_forward(r.out.data(), r.lse.data(), pb.q.data(), segs.data(),
                    static_cast<int64_t>(segs.size()), pb.h, pb.hk, pb.d);
  attention_backward(r.dq.data(), segs.data(), static_cast<int64_t>(segs.size()), pb.dout.data(),
                     pb.q.data(), r.out.data(), r.lse.data(), pb.h, pb.hk, pb.d);
  return r;
}

void ExpectMatchesReference(const Problem& pb, double tol) {
  Result r = RunBoth(pb);
  std::vector<double> out, dq;
  std::vector<std::vector<double>> dk, dv;
  pb.Reference(&out, &dq, &dk, &dv);
  EXPECT_LT(RelErr(r.out, out), tol) << "out";
  EXPECT_LT(RelErr(r.dq, dq), tol) << "dq";
  for (size_t s = 0; s < pb.pieces.size(); ++s) {
    EXPECT_LT(RelErr(r.dk[s], dk[s]), tol) << "dk of piece " << s;
    EXPECT_LT(RelErr(r.dv[s], dv[s]), tol) << "dv of piece " << s;
  }
}

TEST(Attention, PackedPiecesWithPrefix_MatchDoubleReference) {
  // Three packed pieces: a whole short sequence, a continuation with 70
  // earlier tokens in the state, a piece longer than one query block.
  Problem pb(4, 2, 8, {{0, 5}, {70, 9}, {0, 150}}, 1);
  ExpectMatchesReference(pb, 1e-5);
}

TEST(Attention, MultiQueryAndSingleToken_MatchDoubleReference) {
  Problem pb(6, 1, 4, {{0, 1}, {3, 1}, {0, 2}}, 7);
  ExpectMatchesReference(pb, 1e-5);
  Problem mha(2, 2, 16, {{130, 65}}, 9);
  ExpectMatchesReference(mha, 1e-5);
}

TEST(Attention, Backward_AccumulatesIntoGradients) {
  Problem pb(4, 2, 8, {{10, 20}}, 3);
  Result once = RunBoth(pb);
  // Second run on buffers prefilled with the first run's gradients.
  Result twice = once;
  std::vector<AttentionSegment> segs = pb.Segments(&twice.dk, &twice.dv);
  attention_backward(twice.dq.data(), segs.data(), 1, pb.dout.data(), pb.q.data(),
                     once.out.data(), once.lse.data(), pb.h, pb.hk, pb.d);
  for (size_t i = 0; i < once.dq.size(); ++i) ASSERT_FLOAT_EQ(twice.dq[i], 2 * once.dq[i]);
  for (size_t i = 0; i < once.dk[0].size(); ++i) {
    ASSERT_FLOAT_EQ(twice.dk[0][i], 2 * once.dk[0][i]);
    ASSERT_FLOAT_EQ(twice.dv[0][i], 2 * once.dv[0][i]);
  }
}

// Splitting one sequence into chunks that read earlier chunks' K/V gives the
// same outputs, and the chunks' dk/dv contributions sum to the whole's.
TEST(Attention, SplitIntoChunks_EqualsWhole) {
  const int64_t h = 4, hk = 2, d = 8, n = 100;
  Problem whole(h, hk, d, {{0, n}}, 11);
  Result w = RunBoth(whole);
  std::vector<float> dk(whole.k[0].size(), 0.0f), dv(whole.v[0].size(), 0.0f);
  for (int64_t start : {70, 31, 0}) {  // last chunk first, as the backward runs
    const int64_t len = (start == 70 ? n : start == 31 ? 70 : 31) - start;
    AttentionSegment sg{0, len, start, whole.k[0].data(), whole.v[0].data(), dk.data(), dv.data()};
    std::vector<float> out(len * h * d), lse(len * h), dq(len * h * d, 0.0f);
    const float* q = whole.q.data() + start * h * d;
    attention_forward(out.data(), lse.data(), q, &sg, 1, h, hk, d);
    attention_backward(dq.data(), &sg, 1, whole.dout.data() + start * h * d, q, out.data(),
                       lse.data(), h, hk, d);
    for (int64_t i = 0; i < len * h * d; ++i) {
      ASSERT_NEAR(out[i], w.out[start * h * d + i], 1e-5);
      ASSERT_NEAR(dq[i], w.dq[start * h * d + i], 1e-5);
    }
  }
  for (size_t i = 0; i < dk.size(); ++i) {
    ASSERT_NEAR(dk[i], w.dk[0][i], 1e-5);
    ASSERT_NEAR(dv[i], w.dv[0][i], 1e-5);
  }
}

// Central finite differences of sum(out .* dout) for a few entries of q, k, v.
TEST(Attention, Gradients_MatchFiniteDifferences) {
  Problem pb(2, 1, 4, {{3, 4}, {0, 3}}, 5);
  Result r = RunBoth(pb);
  auto objective = [&]() {
    std::vector<float> out(pb.q.size()), lse(pb.t * pb.h);
    std::vector<AttentionSegment> segs = pb.Segments(nullptr, nullptr);
    attention_forward(out.data(), lse.data(), pb.q.data(), segs.data(), 2, pb.h, pb.hk, pb.d);
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += double(out[i]) * pb.dout[i];
    return l;
  };
  auto check = [&](float* x, float analytic, const char* what) {
    const float h = 1e-2f, keep = *x;
    *x = keep + h;
    const double up = objective();
    *x = keep - h;
    const double down = objective();
    *x = keep;
    EXPECT_NEAR((up - down) / (2 * h), analytic, 2e-3 * std::max(1.0f, std::fabs(analytic))) << what;
  };
  for (int i : {0, 5, 17, 30}) check(&pb.q[i], r.dq[i], "q");
  for (int i : {0, 9, 20, 27}) check(&pb.k[0][i], r.dk[0][i], "k");
  for (int i : {1, 8, 11}) check(&pb.v[1][i], r.dv[1][i], "v");
}

}  // namespace
}  // namespace chunkflow::kernels::cpu
