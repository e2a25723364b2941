// RMSNorm (LlamaRMSNorm): y = x * rsqrt(mean(x²) + eps) * weight, statistics in f32 per row.
#include <cmath>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  const RowsCols sizes = check_rms_norm(Device::kCPU, x, weight, y);
  const int64_t rows = sizes.rows, d = sizes.cols;
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
