// rms_norm_backward: the gradients of y = x · r · w with r = 1 / sqrt(mean(x²) + eps) per row.
// With n = x · r (x, dy [R, D], w [D]):
//   dx[r, :] += r · (dy∘w − n · mean(dy∘w∘n)),   dweight[d] += Σ_rows dy[:, d] · n[:, d].
// r is recomputed exactly as the forward does (double sum of squares, f32 rsqrt); the per-row
// mean and the column sums are taken in double. dx runs parallel over rows; dweight over blocks of
// columns with the rows summed in order inside, so neither depends on the thread count.
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {
constexpr int64_t kColumnBlock = 64;
}  // namespace

void CpuBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, float eps,
                                   const Tensor& dy, Tensor& dx, Tensor& dweight) {
  // dy takes the place of the forward's y: [R, D] f32 like x.
  const RowsCols sizes = check_rms_norm(Device::kCPU, x, weight, dy);
  const int64_t rows = sizes.rows, d = sizes.cols;
  if (dx.defined()) require_f32(dx, {rows, d}, "rms_norm_backward dx");
  if (dweight.defined()) require_f32(dweight, weight.shape(), "rms_norm_backward dweight");
  if (!dx.defined() && !dweight.defined()) return;
  const std::vector<float> w = to_f32_vector(weight);
  const float* px = x.data<float>();
  const float* pdy = dy.data<float>();

  // r per row, as the forward computes it.
  std::vector<float> inv(static_cast<std::size_t>(rows));
#pragma omp parallel for if (rows * d > (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = px + r * d;
    double sum = 0.0;
    for (int64_t i = 0; i < d; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    inv[r] = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(d)) + eps);
  }

  if (dx.defined()) {
    float* pdx = dx.mutable_data<float>();
#pragma omp parallel for if (rows * d > (1 << 15))
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = px + r * d;
      const float* dyr = pdy + r * d;
      const double rr = inv[r];
      double dot = 0.0;  // Σ_d dy·w·n
      for (int64_t i = 0; i < d; ++i)
        dot += static_cast<double>(dyr[i]) * w[i] * (static_cast<double>(xr[i]) * rr);
      const double mean = dot / static_cast<double>(d);
      float* dxr = pdx + r * d;
      for (int64_t i = 0; i < d; ++i) {
        const double n = static_cast<double>(xr[i]) * rr;
        dxr[i] += static_cast<float>(rr * (static_cast<double>(dyr[i]) * w[i] - n * mean));
      }
    }
  }

  if (dweight.defined()) {
    float* pdw = dweight.mutable_data<float>();
    const int64_t blocks = (d + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for if (rows * d > (1 << 15))
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t c0 = b * kColumnBlock, c1 = std::min(d, c0 + kColumnBlock);
      double acc[kColumnBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const double rr = inv[r];
        const float* xr = px + r * d;
        const float* dyr = pdy + r * d;
        for (int64_t c = c0; c < c1; ++c)
          acc[c - c0] += static_cast<double>(dyr[c]) * (static_cast<double>(xr[c]) * rr);
      }
      for (int64_t c = c0; c < c1; ++c) pdw[c] += static_cast<float>(acc[c - c0]);
    }
  }
}

}  // namespace refinery::backend::cpu
