#include "coordinator/planner/cost_fit.h"

#include <array>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace chunkflow::planner {
namespace {

constexpr int kTerms = 3;  // linear (tokens), quadratic (pairs), fixed (1)

using Row = std::array<double, kTerms>;

Row Features(const OpSample& s) {
  return {static_cast<double>(s.tokens), static_cast<double>(s.attention_pairs), 1.0};
}

double Predict(const StageCost& c, const OpSample& s) {
  return c.linear_s_per_token * static_cast<double>(s.tokens) +
         c.quadratic_s_per_pair * static_cast<double>(s.attention_pairs) + c.fixed_s;
}

// Solves the normal equations restricted to the terms in `mask` (columns
// scaled to unit max so tokens (~1e4) and pairs (~1e8) condition alike).
// Returns false when they are singular: the samples cannot tell the terms
// apart.
bool SolveSubset(const std::vector<Row>& x, const std::vector<double>& y, unsigned mask,
                 Row* coef) {
  int idx[kTerms], n = 0;
  for (int j = 0; j < kTerms; ++j) {
    if (mask & (1u << j)) idx[n++] = j;
  }
  Row scale{};
  for (const Row& r : x) {
    for (int j = 0; j < kTerms; ++j) scale[j] = std::max(scale[j], std::fabs(r[j]));
  }
  double a[kTerms][kTerms + 1] = {};
  for (size_t i = 0; i < x.size(); ++i) {
    for (int p = 0; p < n; ++p) {
      const double xp = scale[idx[p]] > 0 ? x[i][idx[p]] / scale[idx[p]] : 0.0;
      for (int q = 0; q < n; ++q) {
        const double xq = scale[idx[q]] > 0 ? x[i][idx[q]] / scale[idx[q]] : 0.0;
        a[p][q] += xp * xq;
      }
      a[p][n] += xp * y[i];
    }
  }
  // Gaussian elimination with partial pivoting on the n x n system.
  for (int c = 0; c < n; ++c) {
    int piv = c;
    for (int r = c + 1; r < n; ++r) {
      if (std::fabs(a[r][c]) > std::fabs(a[piv][c])) piv = r;
    }
    if (std::fabs(a[piv][c]) < 1e-10 * static_cast<double>(x.size())) return false;
    for (int k = 0; k <= n; ++k) std::swap(a[c][k], a[piv][k]);
    for (int r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = a[r][c] / a[c][c];
      for (int k = c; k <= n; ++k) a[r][k] -= f * a[c][k];
    }
  }
  *coef = Row{};
  for (int p = 0; p < n; ++p) (*coef)[idx[p]] = a[p][n] / a[p][p] / scale[idx[p]];
  return true;
}

// Non-negative least squares over three terms: the best of the subsets whose
// unconstrained solution is non-negative (exact for this size). False when no
// subset that includes a varying term can be solved.
bool FitStage(const std::vector<Row>& x, const std::vector<double>& y, StageCost* out) {
  double best = std::numeric_limits<double>::infinity();
  Row best_coef{};
  bool any = false;
  for (unsigned mask = 1; mask < (1u << kTerms); ++mask) {
    Row coef;
    if (!SolveSubset(x, y, mask, &coef)) continue;
    bool feasible = true;
    for (double c : coef) feasible = feasible && c >= 0;
    if (!feasible) continue;
    double sse = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      double p = 0;
      for (int j = 0; j < kTerms; ++j) p += coef[j] * x[i][j];
      sse += (p - y[i]) * (p - y[i]);
    }
    // Prefer fewer terms on (near) ties: simpler models extrapolate better.
    if (sse < best * (1 - 1e-9)) {
      best = sse;
      best_coef = coef;
      any = true;
    }
  }
  if (!any) return false;
  out->linear_s_per_token = best_coef[0];
  out->quadratic_s_per_pair = best_coef[1];
  out->fixed_s = best_coef[2];
  return true;
}

// Whether the samples vary in a way that separates the terms: at least two
// distinct (tokens, pairs) shapes.
bool Varied(const std::vector<Row>& x) {
  for (const Row& r : x) {
    if (r[0] != x.front()[0] || r[1] != x.front()[1]) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<CostModel> FitCostModel(const std::vector<OpSample>& samples,
                                       const CostModel& prior, const CostFitOptions& options) {
  if (absl::Status s = ValidateCostModel(prior, static_cast<int32_t>(prior.stages.size())); !s.ok()) return s;
  const int32_t pp = static_cast<int32_t>(prior.stages.size());
  std::vector<std::vector<Row>> x(pp);
  std::vector<std::vector<double>> y(pp);
  for (size_t i = 0; i < samples.size(); ++i) {
    const OpSample& s = samples[i];
    if (s.stage < 0 || s.stage >= pp) {
      return absl::InvalidArgumentError(absl::StrCat("sample ", i, ": stage ", s.stage,
                                                     " is outside the model's ", pp, " stages"));
    }
    if (s.tokens < 0 || s.attention_pairs < 0 || !(s.seconds >= 0) || !std::isfinite(s.seconds)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sample ", i, ": tokens ", s.tokens, ", pairs ", s.attention_pairs, ", seconds ",
          s.seconds, "; all must be finite and >= 0"));
    }
    if (s.backward) continue;
    x[s.stage].push_back(Features(s));
    y[s.stage].push_back(s.seconds);
  }
  CostModel fitted = prior;
  std::vector<bool> refit(pp, false);
  for (int32_t st = 0; st < pp; ++st) {
    if (static_cast<int32_t>(x[st].size()) < options.min_samples) continue;
    refit[st] = true;
    StageCost c;
    if (Varied(x[st]) && FitStage(x[st], y[st], &c)) {
      fitted.stages[st] = c;
      continue;
    }
    // One shape only: keep the prior's split between the terms, scaled.
    double num = 0, den = 0;
    for (size_t i = 0; i < x[st].size(); ++i) {
      OpSample s;
      s.tokens = static_cast<int64_t>(x[st][i][0]);
      s.attention_pairs = static_cast<int64_t>(x[st][i][1]);
      const double p = Predict(prior.stages[st], s);
      num += p * y[st][i];
      den += p * p;
    }
    if (den > 0) {
      const double k = num / den;
      StageCost& f = fitted.stages[st];
      f.linear_s_per_token *= k;
      f.quadratic_s_per_pair *= k;
      f.fixed_s *= k;
    }
  }
  // Backward ratio: measured backward time over the fitted forward time of
  // the same op shapes, on the refitted stages only. A stage still on the
  // prior predicts its forwards at the prior's speed (a CPU's, say, against
  // a GPU's measured backwards: a ratio off by orders of magnitude), so
  // with no stage refitted the prior's ratio stays.
  double bwd = 0, fwd = 0;
  for (const OpSample& s : samples) {
    if (!s.backward || !refit[s.stage]) continue;
    bwd += s.seconds;
    fwd += Predict(fitted.stages[s.stage], s);
  }
  if (fwd > 0 && bwd > 0) fitted.backward_ratio = bwd / fwd;
  if (absl::Status s = ValidateCostModel(fitted, static_cast<int32_t>(fitted.stages.size())); !s.ok()) {
    return absl::InternalError(absl::StrCat("the fitted cost model is invalid: ", s.message()));
  }
  return fitted;
}

}  // namespace chunkflow::planner
