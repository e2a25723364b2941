#pragma once
// Helpers of the CUDA backend tests: every op runs on the CPU reference backend and on the CUDA
// backend with the same random inputs; the CUDA output is poisoned (NaN) before the run, and the
// comparison reports the op, the shape, the largest error and its position.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/core/tensor.hpp"
#include "tests/engine/backend/cpu/backend_test_util.hpp"

namespace refinery::cuda_test {

using backend::Backend;

// Seeded random tensors, dtype rounding and element access shared with the CPU op tests.
using backend::test::convert;
using backend::test::random_f32;
using backend::test::values;

inline std::vector<int32_t> ints(const Tensor& t) {
  const Tensor h = t.device() == Device::kCPU ? t : t.to(Device::kCPU);
  return std::vector<int32_t>(h.data<int32_t>(), h.data<int32_t>() + h.numel());
}

inline Tensor gpu(const Tensor& host) { return host.to(Device::kCUDA); }
// Host f32 `t` rounded to `dtype`, on the device.
inline Tensor dev(const Tensor& t, DType dtype = DType::kF32) { return gpu(convert(t, dtype)); }

// Sets an environment variable for one scope (kernel choices the backend reads per call).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* before = std::getenv(name);
    had_ = before != nullptr;
    if (had_) saved_ = before;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_)
      setenv(name_, saved_.c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string saved_;
};

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

// A device copy of host f32 `t` in `dtype` placed one element past a 16-byte boundary (a view
// into a larger buffer), so that the kernels take their scalar path.
inline Tensor misaligned_dev(const Tensor& t, DType dtype) {
  const Tensor c = convert(t, dtype);
  const std::size_t elem = dtype_bytes_for(dtype, 1);
  Tensor buf = Tensor::empty(dtype, {t.numel() + 1});
  std::memcpy(static_cast<char*>(buf.mutable_data()) + elem, c.data(), c.nbytes());
  return gpu(buf).view_bytes(elem, dtype, t.shape());
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::kCPU), hb = b.to(Device::kCPU);
  return ha.nbytes() == hb.nbytes() && std::memcmp(ha.data(), hb.data(), ha.nbytes()) == 0;
}

// A RoPE table of `positions` rows with random (not trigonometric) cos/sin: the kernels must
// only pair and multiply, so any values test them.
inline backend::RopeTable random_table(int64_t positions, int rotary_dim,
                                       model::RopePairing pairing, uint64_t seed) {
  backend::RopeTable t;
  t.rotary_dim = rotary_dim;
  t.pairing = pairing;
  t.cos = random_f32({positions, rotary_dim / 2}, seed);
  t.sin = random_f32({positions, rotary_dim / 2}, seed + 1);
  return t;
}

// `count` MoE experts of one shape: gate and up [inter, hidden], down [hidden, inter], seeded
// random values times `scale` rounded to `dtype` (one seed per matrix: ++seed, in that order).
inline std::vector<backend::ExpertWeights> random_experts(int64_t count, int64_t inter,
                                                          int64_t hidden, uint64_t& seed,
                                                          float scale, DType dtype) {
  std::vector<backend::ExpertWeights> experts(static_cast<std::size_t>(count));
  for (auto& ew : experts) {
    ew.gate.storage = backend::DenseWeight{convert(random_f32({inter, hidden}, ++seed, scale), dtype)};
    ew.up.storage = backend::DenseWeight{convert(random_f32({inter, hidden}, ++seed, scale), dtype)};
    ew.down.storage = backend::DenseWeight{convert(random_f32({hidden, inter}, ++seed, scale), dtype)};
    ew.gate.name = "gate";
    ew.up.name = "up";
    ew.down.name = "down";
  }
  return experts;
}

inline bool no_gpu() { return cuda::list_devices().empty(); }

}  // namespace refinery::cuda_test

// Skips a test where there is no CUDA device, with the reason.
#define SKIP_WITHOUT_GPU() \
  if (::refinery::cuda_test::no_gpu()) GTEST_SKIP() << ::refinery::cuda::no_device_reason()
