#pragma once
// Finite-difference gradient checks for the CPU backward ops.
//
// Each test writes a small double-precision reference forward f of the op, picks a random dy and
// defines L(inputs) = Σ dy∘f(inputs) in double. The analytic gradient comes from the backend's f32
// backward op; the numerical one from central differences of L in double with h = 1e-5:
//   ∂L/∂x_i ≈ (L(x + h e_i) − L(x − h e_i)) / 2h.
// Truncation error is O(h² · L''') ~ 1e-10 and cancellation ~ 1e-16 · |L| / h ~ 1e-10 for these
// sizes, so the comparison measures the f32 op's own rounding (~1e-6 relative). Bound: every
// checked element within kGradTolerance (1e-4) times the largest |analytic| of the tensor; a wrong
// term in a gradient formula is off by O(1) of that scale.
//
// Gradient outputs are pre-filled with random values (GradOut) and the analytic gradient is what
// the op added, which also checks the accumulate (+=) convention.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "engine/core/tensor.hpp"

namespace refinery::backend::test {

inline constexpr double kGradTolerance = 1e-4;
inline constexpr double kFdStep = 1e-5;

// n normal values times `scale`, rounded to f32 so that an f32 tensor holds them exactly.
inline std::vector<double> random_values(std::size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = static_cast<float>(dist(rng));
  return v;
}

inline Tensor f32_tensor(const std::vector<double>& v, std::vector<int64_t> shape) {
  Tensor t = Tensor::empty(DType::kF32, std::move(shape));
  EXPECT_EQ(static_cast<std::size_t>(t.numel()), v.size());
  float* p = t.mutable_data<float>();
  for (std::size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i]);
  return t;
}

// The elements of an f32 tensor as doubles.
inline std::vector<double> doubles(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<double>(p, p + t.numel());
}

// A gradient output pre-filled with random values; added() is what the op added to them.
struct GradOut {
  Tensor t;
  std::vector<double> before;

  GradOut(std::vector<int64_t> shape, uint64_t seed) {
    t = Tensor::empty(DType::kF32, std::move(shape));
    before = random_values(static_cast<std::size_t>(t.numel()), seed, 0.5);
    float* p = t.mutable_data<float>();
    for (std::size_t i = 0; i < before.size(); ++i) p[i] = static_cast<float>(before[i]);
  }
  std::vector<double> added() const {
    std::vector<double> a = doubles(t);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] -= before[i];
    return a;
  }
};

// Checks `analytic` (the gradient of loss() with respect to x) by central differences on every
// element of x, or on `samples` random elements when x has more than max(40, samples). x is
// perturbed in place and restored; loss() must read it.
inline void expect_fd_gradient(const std::string& what, std::vector<double>& x,
                               const std::vector<double>& analytic,
                               const std::function<double()>& loss, std::size_t samples = 30,
                               uint64_t seed = 7) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  std::vector<std::size_t> idx;
  if (x.size() <= std::max<std::size_t>(40, samples)) {
    for (std::size_t i = 0; i < x.size(); ++i) idx.push_back(i);
  } else {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<std::size_t> pick(0, x.size() - 1);
    for (std::size_t i = 0; i < samples; ++i) idx.push_back(pick(rng));
  }
  double scale = 0.0;
  for (double a : analytic) scale = std::max(scale, std::abs(a));
  ASSERT_GT(scale, 0.0) << what << ": the gradient is zero everywhere, the check would be empty";
  for (std::size_t i : idx) {
    const double x0 = x[i];
    x[i] = x0 + kFdStep;
    const double up = loss();
    x[i] = x0 - kFdStep;
    const double down = loss();
    x[i] = x0;
    const double numeric = (up - down) / (2.0 * kFdStep);
    EXPECT_NEAR(analytic[i], numeric, kGradTolerance * scale) << what << " element " << i;
  }
}

// Σ a∘b.
inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0.0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    m = std::max(m, std::abs(a[i] - b[i]));
  return a.size() == b.size() ? m : INFINITY;
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

}  // namespace refinery::backend::test
