// Helpers shared by the kernel tests: seeded random tensors, error norms, and
// a central finite-difference gradient estimator for any scalar objective.
//
// Usage (checking a backward kernel against finite differences):
//
//   std::vector<float> x = RandomVector(T * C, /*seed=*/1);
//   std::vector<float> r = RandomVector(T * C, /*seed=*/2);   // fixed weights
//   std::vector<float> out(T * C);
//   auto objective = [&] {                 // L = sum(out .* r), in double
//     my_forward(out.data(), x.data(), T, C);
//     return WeightedSum(out.data(), r.data(), T * C);
//   };
//   std::vector<float> dx(T * C, 0.0f);
//   my_backward(dx.data(), r.data(), x.data(), T, C);   // dL/dout = r
//   std::vector<int64_t> idx = SampleIndices(T * C, 64, /*seed=*/3);
//   std::vector<double> fd = FiniteDifferenceGradient(objective, x.data(), idx, 1e-2f);
//   EXPECT_LT(GradientRelativeError(dx.data(), idx, fd), 2e-3);
//
// fp32 forward passes with h in [1e-3, 1e-2] typically give central differences
// within ~1e-3 relative error (measured over the sampled subset, in 2-norm).

#ifndef CHUNKFLOW_KERNELS_CPU_TEST_UTIL_H_
#define CHUNKFLOW_KERNELS_CPU_TEST_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

namespace chunkflow::kernels::cpu::testing {

// ---------------------------------------------------------------------------
// Random inputs
// ---------------------------------------------------------------------------

// n samples of N(0, scale^2), deterministic in `seed`.
inline std::vector<float> RandomVector(int64_t n, uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// n integers uniform in [lo, hi], deterministic in `seed` (token ids, targets).
inline std::vector<int32_t> RandomInts(int64_t n, int32_t lo, int32_t hi, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& x : v) x = dist(rng);
  return v;
}

// Up to k distinct indices in [0, n), sorted; always includes 0 and n-1 so the
// edges of a buffer are checked. Returns all of [0, n) when n <= k.
inline std::vector<int64_t> SampleIndices(int64_t n, int64_t k, uint64_t seed) {
  std::vector<int64_t> idx;
  if (n <= k) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
    return idx;
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> dist(0, n - 1);
  idx.push_back(0);
  idx.push_back(n - 1);
  while (static_cast<int64_t>(idx.size()) < k) {
    int64_t i = dist(rng);
    if (std::find(idx.begin(), idx.end(), i) == idx.end()) idx.push_back(i);
  }
  std::sort(idx.begin(), idx.end());
  return idx;
}

// ---------------------------------------------------------------------------
// Norms and errors (all in double)
// ---------------------------------------------------------------------------

// sum_i a[i] * w[i], accumulated in double: the scalar objective L = sum(out .* R).
inline double WeightedSum(const float* a, const float* w, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * w[i];
  return s;
}

// ||a - b||_2 / max(||b||_2, 1e-30); b is the reference.
inline double RelativeError(const float* a, const float* b, int64_t n) {
  double diff = 0.0, ref = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    diff += d * d;
    ref += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-30);
}

// Same, with a double-precision reference (naive reference implementations).
inline double RelativeError(const float* a, const double* b, int64_t n) {
  double diff = 0.0, ref = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    diff += d * d;
    ref += b[i] * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-30);
}

// max_i |a[i] - b[i]|.
inline double MaxAbsDiff(const float* a, const float* b, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

// Same, with a double-precision reference.
inline double MaxAbsDiff(const float* a, const double* b, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  return m;
}

// ---------------------------------------------------------------------------
// Finite differences
// ---------------------------------------------------------------------------

// Central-difference estimate of d objective / d param[i] for each i in
// `indices`: (f(p + h) - f(p - h)) / (actual step). The step actually taken is
// measured after rounding p +/- h to fp32, which removes the representation
// error of the step itself. `objective` must re-run the forward pass from
// `param` each call; `param` is restored exactly before returning.
inline std::vector<double> FiniteDifferenceGradient(const std::function<double()>& objective,
                                                    float* param,
                                                    const std::vector<int64_t>& indices,
                                                    float h = 1e-2f) {
  std::vector<double> grad;
  grad.reserve(indices.size());
  for (int64_t i : indices) {
    const float orig = param[i];
    param[i] = orig + h;
    const double up_step = static_cast<double>(param[i]) - orig;
    const double f_plus = objective();
    param[i] = orig - h;
    const double down_step = static_cast<double>(orig) - param[i];
    const double f_minus = objective();
    param[i] = orig;
    grad.push_back((f_plus - f_minus) / (up_step + down_step));
  }
  return grad;
}

// ||analytic[indices] - fd||_2 / max(||fd||_2, 1e-30): compares a backward
// kernel's output at the sampled indices with FiniteDifferenceGradient's.
inline double GradientRelativeError(const float* analytic, const std::vector<int64_t>& indices,
                                    const std::vector<double>& fd) {
  double diff = 0.0, ref = 0.0;
  for (size_t k = 0; k < indices.size(); ++k) {
    const double d = static_cast<double>(analytic[indices[k]]) - fd[k];
    diff += d * d;
    ref += fd[k] * fd[k];
  }
  return std::sqrt(diff) / std::max(std::sqrt(ref), 1e-30);
}

}  // namespace chunkflow::kernels::cpu::testing

#endif  // CHUNKFLOW_KERNELS_CPU_TEST_UTIL_H_
