// RMSNorm (LlamaRMSNorm): y = x * rsqrt(mean(x²) + eps) * weight, statistics in f32 per row.
#include <cmath>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  REFINERY_CHECK(x.ndim() == 2, "rms_norm x must be [R, D], found ", x.describe());
  const int64_t rows = x.size(0), d = x.size(1);
  require_f32(x, {rows, d}, "rms_norm x");
  require_f32(y, {rows, d}, "rms_norm y");
  REFINERY_CHECK(weight.numel() == d, "rms_norm weight must have ", d, " elements, found ",
                 weight.describe());
  const std::vector<float> w = to_f32_vector(weight);
  const float* px = x.data<float>();
  float* py = y.mutable_data<float>();
#pragma omp parallel for if (rows * d > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = px + r * d;
    double sum = 0.0;  // f64 accumulation: order-independent to well below f32 resolution
    for (int64_t i = 0; i < d; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float inv = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(d)) + eps);
    float* yr = py + r * d;
    for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] * inv) * w[i];
  }
}

}  // namespace refinery::backend::cpu
