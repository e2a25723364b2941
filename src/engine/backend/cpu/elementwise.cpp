// Element-wise and copy ops: embedding lookup, residual add, SwiGLU, sigmoid gate, column copies.
// All memory bound; parallel over rows.
#include <cmath>
#include <cstring>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

void CpuBackend::embedding(const Tensor& ids, const Tensor& table, Tensor& y) {
  REFINERY_CHECK(table.ndim() == 2, "embedding table must be 2-D, found ", table.describe());
  const int64_t n = ids.numel(), vocab = table.size(0), hidden = table.size(1);
  require_i32(ids, {n}, "embedding ids");
  require_f32(y, {n, hidden}, "embedding output");
  const int32_t* id = ids.data<int32_t>();
  for (int64_t t = 0; t < n; ++t)
    if (id[t] < 0 || id[t] >= vocab)
      throw_user_error("token id ", id[t], " at position ", t, " is outside the vocabulary [0, ",
                       vocab, "); the input was made with another tokenizer or model");
  const std::size_t row_bytes = dtype_bytes_for(table.dtype(), static_cast<std::size_t>(hidden));
  const auto* base = static_cast<const std::byte*>(table.data());
  float* out = y.mutable_data<float>();
#pragma omp parallel for if (n * hidden > (1 << 16))
  for (int64_t t = 0; t < n; ++t)
    convert_to_f32(table.dtype(), base + static_cast<std::size_t>(id[t]) * row_bytes,
                   out + t * hidden, static_cast<std::size_t>(hidden));
}

void CpuBackend::add(const Tensor& a, const Tensor& b, Tensor& y) {
  check_add(Device::kCPU, a, b, y);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* py = y.mutable_data<float>();
  const int64_t n = y.numel();
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) py[i] = pa[i] + pb[i];
}

void CpuBackend::swiglu(const Tensor& gate, const Tensor& up, Tensor& y) {
  check_swiglu(Device::kCPU, gate, up, y);
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  float* py = y.mutable_data<float>();
  const int64_t n = y.numel();
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) py[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void CpuBackend::sigmoid_gate(const Tensor& x, const Tensor& g, Tensor& y) {
  const RowsCols sizes = check_sigmoid_gate(Device::kCPU, x, g, y);
  const int64_t rows = sizes.rows, d = sizes.cols;
  const float* px = x.data<float>();
  const float* pg = g.data<float>();
  float* py = y.mutable_data<float>();
  for (int64_t t = 0; t < rows; ++t) {
    const float s = 1.0f / (1.0f + std::exp(-pg[t]));
    for (int64_t i = 0; i < d; ++i) py[t * d + i] = s * px[t * d + i];
  }
}

void CpuBackend::copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                              int64_t width) {
  const CopyColumnsSizes sizes = check_copy_columns(Device::kCPU, src, src_col, dst, dst_col, width);
  const int64_t rows = sizes.rows, cs = sizes.src_cols, cd = sizes.dst_cols, n = sizes.repeat;
  const float* ps = src.data<float>();
  float* pd = dst.mutable_data<float>();
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(pd + r * cd + dst_col, ps + (r / n) * cs + src_col,
                static_cast<std::size_t>(width) * sizeof(float));
}

void CpuBackend::fill_zero(Tensor& y) {
  REFINERY_CHECK(y.device() == Device::kCPU, "fill_zero: CPU tensor expected");
  std::memset(y.mutable_data(), 0, y.nbytes());
}

}  // namespace refinery::backend::cpu
