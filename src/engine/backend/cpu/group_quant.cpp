// The quantization ops of AWQ's searches on the CPU: group_fake_quantize is the reference math of
// src/quantize/group_quant.cpp on f32 rows; group_output_errors multiplies per group with Eigen.
#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"
#include "quantize/group_quant.hpp"

namespace refinery::backend::cpu {

void CpuBackend::group_fake_quantize(const Tensor& w, const Tensor& s, const FakeQuantSpec& q,
                                     Tensor& out) {
  REFINERY_CHECK(w.ndim() == 2 && out.shape() == w.shape() && out.device() == Device::kCPU &&
                     w.device() == Device::kCPU,
                 "group_fake_quantize: w [out, in] and out of its shape on the CPU, found ",
                 w.describe(), " and ", out.describe());
  REFINERY_CHECK(out.dtype() == DType::kF32 || out.dtype() == DType::kBF16,
                 "group_fake_quantize: out must be f32 or bf16, found ", out.describe());
  const int64_t rows = w.size(0), cols = w.size(1);
  if (s.defined()) require_f32(s, {cols}, "group_fake_quantize s");
  const Tensor wf = w.dtype() == DType::kF32 ? w : w.to_f32();
  std::vector<float> v(wf.data<float>(), wf.data<float>() + wf.numel());
  const float* ps = s.defined() ? s.data<float>() : nullptr;
  const int64_t g = q.group_size;
  REFINERY_CHECK(g > 0 && cols % g == 0, "group_fake_quantize: ", cols,
                 " inputs are not groups of ", g);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = v.data() + r * cols;
    if (ps != nullptr)
      for (int64_t c = 0; c < cols; ++c) row[c] *= ps[c];
    if (q.clip_ratio != 1.0f)
      for (int64_t c0 = 0; c0 < cols; c0 += g) {
        float m = 0.0f;
        for (int64_t c = c0; c < c0 + g; ++c) m = std::max(m, std::fabs(row[c]));
        m *= q.clip_ratio;
        for (int64_t c = c0; c < c0 + g; ++c) row[c] = std::clamp(row[c], -m, m);
      }
  }
  quantize::GroupQuantSpec spec;
  spec.bits = q.bits;
  spec.group_size = q.group_size;
  spec.zero_point = q.zero_point;
  quantize::fake_quantize(v.data(), rows, cols, spec, "group_fake_quantize");
  if (ps != nullptr)
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) v[r * cols + c] /= ps[c];
  convert_from_f32(out.dtype(), v.data(), out.mutable_data(), v.size());
}

void CpuBackend::group_output_errors(const Tensor& x, const Tensor& q, const Tensor& w,
                                     int group_size, Tensor& err) {
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  REFINERY_CHECK(x.ndim() == 2 && w.ndim() == 2 && group_size > 0 && w.size(1) % group_size == 0,
                 "group_output_errors: x [n, in], w [out, in] with in a multiple of ", group_size,
                 ", found ", x.describe(), " and ", w.describe());
  const int64_t n = x.size(0), in = w.size(1), out = w.size(0), groups = in / group_size;
  require_f32(x, {n, in}, "group_output_errors x");
  require_f32(q, {out, in}, "group_output_errors q");
  require_f32(w, {out, in}, "group_output_errors w");
  require_f32(err, {out, groups}, "group_output_errors err");
  Eigen::Map<const RowMatrix> xm(x.data<float>(), n, in), qm(q.data<float>(), out, in),
      wm(w.data<float>(), out, in);
  Eigen::Map<RowMatrix> em(err.mutable_data<float>(), out, groups);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c0 = g * group_size;
    const RowMatrix d = qm.middleCols(c0, group_size) - wm.middleCols(c0, group_size);
    const RowMatrix y = xm.middleCols(c0, group_size) * d.transpose();  // [n, out]
    em.col(g) = y.colwise().squaredNorm().transpose() / static_cast<float>(std::max<int64_t>(n, 1));
  }
}

}  // namespace refinery::backend::cpu
