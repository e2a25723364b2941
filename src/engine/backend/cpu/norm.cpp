// RMSNorm (LlamaRMSNorm): y = x * rsqrt(mean(x²) + eps) * weight, statistics in f32 per row; and
// the residual add fused with it (add_rms_norm), which runs the same row code after the add so
// that it equals add followed by rms_norm bit for bit.
#include <cmath>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {

// One row: xr, yr [d], w [d] f32. The one copy of the arithmetic both ops use (identical FMA
// contraction and summation order).
inline void rms_norm_row(const float* xr, const float* w, int64_t d, float eps, float* yr) {
  double sum = 0.0;  // f64 accumulation: order-independent to well below f32 resolution
  for (int64_t i = 0; i < d; ++i) sum += static_cast<double>(xr[i]) * xr[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(d)) + eps);
  for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] * inv) * w[i];
}

}  // namespace

void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  const RowsCols sizes = check_rms_norm(Device::kCPU, x, weight, y);
  const int64_t rows = sizes.rows, d = sizes.cols;
  const std::vector<float> w = to_f32_vector(weight);
  const float* px = x.data<float>();
  float* py = y.mutable_data<float>();
#pragma omp parallel for if (rows * d > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) rms_norm_row(px + r * d, w.data(), d, eps, py + r * d);
}

// x [R, D] += delta, out = rms_norm(x): row by row, so each row is read from memory once.
void CpuBackend::add_rms_norm(Tensor& x, const Tensor& delta, const Tensor& weight, float eps,
                              Tensor& out) {
  const RowsCols sizes = check_add_rms_norm(Device::kCPU, x, delta, weight, out);
  const int64_t rows = sizes.rows, d = sizes.cols;
  const std::vector<float> w = to_f32_vector(weight);
  float* px = x.mutable_data<float>();
  const float* pd = delta.data<float>();
  float* po = out.mutable_data<float>();
#pragma omp parallel for if (rows * d > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    float* xr = px + r * d;
    const float* dr = pd + r * d;
    for (int64_t i = 0; i < d; ++i) xr[i] = xr[i] + dr[i];  // as add(): one f32 rounding
    rms_norm_row(xr, w.data(), d, eps, po + r * d);
  }
}

}  // namespace refinery::backend::cpu
