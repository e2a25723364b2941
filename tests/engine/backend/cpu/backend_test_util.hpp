#pragma once
// Helpers for the CPU backend op tests: seeded random tensors and naive references.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/core/tensor.hpp"

namespace refinery::backend::test {

inline Tensor random_f32(std::vector<int64_t> shape, uint64_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(DType::kF32, std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, scale);
  float* p = t.mutable_data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = n(rng);
  return t;
}

// `src` rounded to `dtype` (f32/bf16/f16/f8e4m3) as a new tensor of that dtype.
inline Tensor convert(const Tensor& src, DType dtype) {
  Tensor t = Tensor::empty(dtype, src.shape());
  convert_from_f32(dtype, src.data<float>(), t.mutable_data(),
                   static_cast<std::size_t>(src.numel()));
  return t;
}

// The elements of `t` as f32 (downloaded first when `t` lives on a device).
inline std::vector<float> values(const Tensor& t) {
  const Tensor h = t.device() == Device::kCPU ? t : t.to(Device::kCPU);
  std::vector<float> v(static_cast<std::size_t>(h.numel()));
  convert_to_f32(h.dtype(), h.data(), v.data(), v.size());
  return v;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0.0;
  for (std::size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return INFINITY;
    m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  }
  return m;
}

inline double max_abs(const std::vector<float>& a) {
  double m = 0.0;
  for (float v : a) m = std::max(m, std::abs(static_cast<double>(v)));
  return m;
}

// Output poisoned with NaN, so an op that forgets to write an element fails.
inline Tensor poisoned(std::vector<int64_t> shape, DType dtype = DType::kF32) {
  Tensor t = Tensor::empty(dtype, std::move(shape));
  if (dtype == DType::kF32) {
    float* p = t.mutable_data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = NAN;
  } else {
    std::memset(t.mutable_data(), 0x7f, t.nbytes());
  }
  return t;
}

// AdamW scalars of step `step` (lr 1e-3·step, weight decay 0.1, betas 0.9/0.95, eps 1e-8) for the
// optimizer op tests; decay off (the multi-tensor form sets it per tensor).
inline AdamWScalars adamw_test_scalars(int step, float grad_scale) {
  const double lr = 1e-3 * step, wd = 0.1, beta1 = 0.9, beta2 = 0.95;
  AdamWScalars s;
  s.decay = false;
  s.decay_factor = static_cast<float>(1.0 - lr * wd);
  s.lerp_weight = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, step)));
  s.eps = 1e-8f;
  s.neg_step_size = static_cast<float>(-(lr / (1.0 - std::pow(beta1, step))));
  s.grad_scale = grad_scale;
  return s;
}

}  // namespace refinery::backend::test
