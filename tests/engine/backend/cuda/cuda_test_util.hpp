#pragma once
// Helpers of the CUDA backend tests: every op runs on the CPU reference backend and on the CUDA
// backend with the same random inputs; the CUDA output is poisoned (NaN) before the run, and the
// comparison reports the op, the shape, the largest error and its position.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/core/tensor.hpp"

namespace refinery::cuda_test {

using backend::Backend;

inline Tensor random_f32(std::vector<int64_t> shape, uint64_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(DType::kF32, std::move(shape));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, scale);
  float* p = t.mutable_data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = n(rng);
  return t;
}

// `src` (f32) rounded to `dtype` as a new host tensor.
inline Tensor convert(const Tensor& src, DType dtype) {
  Tensor t = Tensor::empty(dtype, src.shape());
  convert_from_f32(dtype, src.data<float>(), t.mutable_data(),
                   static_cast<std::size_t>(src.numel()));
  return t;
}

inline std::vector<float> values(const Tensor& t) {
  const Tensor h = t.device() == Device::kCPU ? t : t.to(Device::kCPU);
  std::vector<float> v(static_cast<std::size_t>(h.numel()));
  convert_to_f32(h.dtype(), h.data(), v.data(), v.size());
  return v;
}

inline std::vector<int32_t> ints(const Tensor& t) {
  const Tensor h = t.device() == Device::kCPU ? t : t.to(Device::kCPU);
  return std::vector<int32_t>(h.data<int32_t>(), h.data<int32_t>() + h.numel());
}

inline Tensor gpu(const Tensor& host) { return host.to(Device::kCUDA); }

// A device tensor filled with NaN (f32) or 0x7f bytes (other dtypes).
inline Tensor poisoned_gpu(std::vector<int64_t> shape, DType dtype = DType::kF32) {
  Tensor t = Tensor::empty(dtype, std::move(shape));
  if (dtype == DType::kF32) {
    float* p = t.mutable_data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = NAN;
  } else {
    std::memset(t.mutable_data(), 0x7f, t.nbytes());
  }
  return gpu(t);
}

inline std::string index_string(int64_t flat, const std::vector<int64_t>& shape) {
  std::vector<int64_t> idx(shape.size());
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    const int64_t n = std::max<int64_t>(shape[d], 1);
    idx[d] = flat % n;
    flat /= n;
  }
  return shape_to_string(idx);
}

// |got - want| <= abs_tol + bound[i] (bound may be empty) at every element, NaN nowhere.
inline ::testing::AssertionResult close(const std::string& what, const Tensor& got,
                                        const Tensor& want, double abs_tol,
                                        const std::vector<float>& bound = {}) {
  if (got.shape() != want.shape())
    return ::testing::AssertionFailure() << what << ": shape " << shape_to_string(got.shape())
                                         << " vs " << shape_to_string(want.shape());
  const std::vector<float> g = values(got), w = values(want);
  double worst = -1.0, worst_err = 0.0;
  int64_t at = -1;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const double err = std::abs(double(g[i]) - double(w[i]));
    const double allowed = abs_tol + (bound.empty() ? 0.0 : double(bound[i]));
    const double excess = std::isnan(err) ? INFINITY : err - allowed;
    if (excess > worst) {
      worst = excess;
      worst_err = err;
      at = static_cast<int64_t>(i);
    }
  }
  if (at < 0 || worst <= 0.0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << " shape " << shape_to_string(want.shape()) << ": error " << worst_err
         << " exceeds the bound by " << worst << " at " << index_string(at, want.shape())
         << " (cuda " << g[at] << ", cpu " << w[at] << ", abs tol " << abs_tol << ")";
}

inline double max_abs(const Tensor& t) {
  double m = 0.0;
  for (float v : values(t)) m = std::max(m, std::abs(double(v)));
  return m;
}

}  // namespace refinery::cuda_test
