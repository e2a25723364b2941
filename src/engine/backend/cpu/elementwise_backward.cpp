// Backward of the element-wise and copy ops: embedding, SwiGLU, sigmoid gate, column copies,
// weighted scatter-add. All memory bound. Every gradient element is written by one thread, and
// sums over several contributions run in a fixed order, so results do not depend on the thread
// count (no float atomics).
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {
// Columns of the embedding table one task owns.
constexpr int64_t kEmbeddingColumns = 64;

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
}  // namespace

void CpuBackend::embedding_backward(const Tensor& ids, const Tensor& dy, Tensor& dtable) {
  if (!dtable.defined()) return;
  REFINERY_CHECK(dtable.ndim() == 2, "embedding_backward: dtable must be [vocab, hidden], found ",
                 dtable.describe());
  const int64_t n = ids.numel(), vocab = dtable.size(0), hidden = dtable.size(1);
  require_i32(ids, {n}, "embedding_backward ids");
  require_f32(dy, {n, hidden}, "embedding_backward dy");
  require_f32(dtable, {vocab, hidden}, "embedding_backward dtable");
  const int32_t* id = ids.data<int32_t>();
  for (int64_t t = 0; t < n; ++t)
    if (id[t] < 0 || id[t] >= vocab)
      throw_user_error("token id ", id[t], " at position ", t, " is outside the vocabulary [0, ",
                       vocab, "); the input was made with another tokenizer or model");
  const float* pdy = dy.data<float>();
  float* pt = dtable.mutable_data<float>();
  // One task per block of hidden columns; inside it the tokens are added in order, so a row hit
  // by several tokens always sums them in the same order.
  const int64_t blocks = (hidden + kEmbeddingColumns - 1) / kEmbeddingColumns;
#pragma omp parallel for if (n * hidden > (1 << 16))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kEmbeddingColumns, c1 = std::min(hidden, c0 + kEmbeddingColumns);
    for (int64_t t = 0; t < n; ++t) {
      float* row = pt + static_cast<int64_t>(id[t]) * hidden;
      const float* src = pdy + t * hidden;
      for (int64_t c = c0; c < c1; ++c) row[c] += src[c];
    }
  }
}

void CpuBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy,
                                 Tensor& dgate, Tensor& dup, GradWrite write) {
  check_swiglu(Device::kCPU, gate, up, dy);
  if (dgate.defined()) require_f32(dgate, dy.shape(), "swiglu_backward dgate");
  if (dup.defined()) require_f32(dup, dy.shape(), "swiglu_backward dup");
  if (write == GradWrite::kOverwrite) {  // the same values as adding into zeros
    if (dgate.defined()) fill_zero(dgate);
    if (dup.defined()) fill_zero(dup);
  }
  const float* g = gate.data<float>();
  const float* u = up.data<float>();
  const float* pdy = dy.data<float>();
  float* pdg = dgate.defined() ? dgate.mutable_data<float>() : nullptr;
  float* pdu = dup.defined() ? dup.mutable_data<float>() : nullptr;
  const int64_t n = dy.numel();
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const float s = sigmoid(g[i]);
    // silu'(g) = σ(g) · (1 + g · (1 − σ(g)))
    if (pdg != nullptr) pdg[i] += pdy[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
    if (pdu != nullptr) pdu[i] += pdy[i] * (g[i] * s);
  }
}

void CpuBackend::sigmoid_gate_backward(const Tensor& x, const Tensor& g, const Tensor& dy,
                                       Tensor& dx, Tensor& dg) {
  const RowsCols sizes = check_sigmoid_gate(Device::kCPU, x, g, dy);
  const int64_t rows = sizes.rows, d = sizes.cols;
  if (dx.defined()) require_f32(dx, {rows, d}, "sigmoid_gate_backward dx");
  if (dg.defined()) require_f32(dg, {rows, 1}, "sigmoid_gate_backward dg");
  const float* px = x.data<float>();
  const float* pg = g.data<float>();
  const float* pdy = dy.data<float>();
  float* pdx = dx.defined() ? dx.mutable_data<float>() : nullptr;
  float* pdg = dg.defined() ? dg.mutable_data<float>() : nullptr;
#pragma omp parallel for if (rows * d > (1 << 16))
  for (int64_t t = 0; t < rows; ++t) {
    const float s = sigmoid(pg[t]);
    const float* dyr = pdy + t * d;
    if (pdx != nullptr)
      for (int64_t i = 0; i < d; ++i) pdx[t * d + i] += s * dyr[i];
    if (pdg != nullptr) {
      double dot = 0.0;
      for (int64_t i = 0; i < d; ++i) dot += static_cast<double>(dyr[i]) * px[t * d + i];
      pdg[t] += static_cast<float>(static_cast<double>(s) * (1.0 - s) * dot);
    }
  }
}

void CpuBackend::copy_columns_backward(const Tensor& ddst, int64_t dst_col, Tensor& dsrc,
                                       int64_t src_col, int64_t width) {
  if (!dsrc.defined()) return;
  // The forward's check with the gradients in the places of src and dst.
  const CopyColumnsSizes sizes =
      check_copy_columns(Device::kCPU, dsrc, src_col, ddst, dst_col, width);
  const int64_t cs = sizes.src_cols, cd = sizes.dst_cols, n = sizes.repeat;
  const int64_t src_rows = dsrc.size(0);
  const float* pd = ddst.data<float>();
  float* ps = dsrc.mutable_data<float>();
#pragma omp parallel for if (sizes.rows * width > (1 << 16))
  for (int64_t r = 0; r < src_rows; ++r) {
    float* out = ps + r * cs + src_col;
    for (int64_t i = 0; i < n; ++i) {
      const float* in = pd + (r * n + i) * cd + dst_col;
      for (int64_t j = 0; j < width; ++j) out[j] += in[j];
    }
  }
}

void CpuBackend::scatter_add_rows_backward(const Tensor& x, const Tensor& rows, const Tensor& scale,
                                           const Tensor& dy, Tensor& dx, Tensor& dscale) {
  // The forward's check with dy in the place of y.
  const RowsSizes sizes = check_scatter_add_rows(Device::kCPU, x, rows, scale, dy);
  const int64_t n = sizes.n, d = sizes.d, t_count = sizes.t_count;
  if (dx.defined()) require_f32(dx, {n, d}, "scatter_add_rows_backward dx");
  if (dscale.defined()) require_f32(dscale, {n}, "scatter_add_rows_backward dscale");
  const int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0; i < n; ++i)
    REFINERY_CHECK(r[i] >= 0 && r[i] < t_count, "scatter_add_rows_backward: row ", r[i], " of ",
                   t_count);
  const float* s = scale.data<float>();
  const float* px = x.data<float>();
  const float* pdy = dy.data<float>();
  float* pdx = dx.defined() ? dx.mutable_data<float>() : nullptr;
  float* pds = dscale.defined() ? dscale.mutable_data<float>() : nullptr;
#pragma omp parallel for if (n * d > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    const float* dyr = pdy + static_cast<int64_t>(r[i]) * d;
    if (pdx != nullptr)
      for (int64_t c = 0; c < d; ++c) pdx[i * d + c] += s[i] * dyr[c];
    if (pds != nullptr) {
      double dot = 0.0;
      for (int64_t c = 0; c < d; ++c) dot += static_cast<double>(px[i * d + c]) * dyr[c];
      pds[i] += static_cast<float>(dot);
    }
  }
}

}  // namespace refinery::backend::cpu
