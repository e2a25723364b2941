// MoE combine: every expert runs once over the tokens routed to it (gather rows, gate/up GEMMs,
// SwiGLU, down GEMM), then the outputs are scatter-added with the routing weights. Experts run in
// parallel (each expert's GEMMs single-threaded inside); the scatter-add runs afterwards in expert
// order so that results do not depend on the thread count.
#include <omp.h>

#include <cstring>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

void CpuBackend::gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) {
  const RowsSizes sizes = check_gather_rows(Device::kCPU, x, rows, y);
  const int64_t n = sizes.n, t_count = sizes.t_count, d = sizes.d;
  const int32_t* r = rows.data<int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    REFINERY_CHECK(r[i] >= 0 && r[i] < t_count, "gather_rows: row ", r[i], " of ", t_count);
    std::memcpy(y.mutable_data<float>() + i * d, x.data<float>() + r[i] * d,
                static_cast<std::size_t>(d) * 4);
  }
}

void CpuBackend::scatter_add_rows(const Tensor& x, const Tensor& rows, const Tensor& scale,
                                  Tensor& y) {
  const RowsSizes sizes = check_scatter_add_rows(Device::kCPU, x, rows, scale, y);
  const int64_t n = sizes.n, d = sizes.d, t_count = sizes.t_count;
  const int32_t* r = rows.data<int32_t>();
  const float* s = scale.data<float>();
  const float* px = x.data<float>();
  float* py = y.mutable_data<float>();
  for (int64_t i = 0; i < n; ++i) {
    REFINERY_CHECK(r[i] >= 0 && r[i] < t_count, "scatter_add_rows: row ", r[i], " of ", t_count);
    for (int64_t c = 0; c < d; ++c) py[r[i] * d + c] += s[i] * px[i * d + c];
  }
}

void CpuBackend::moe_experts(const Tensor& x, const Tensor& experts, const Tensor& weights,
                             std::span<const ExpertWeights> expert_weights, Tensor& y,
                             bool accumulate) {
  const MoeSizes sizes = check_moe(Device::kCPU, x, experts, weights, expert_weights, y);
  const int64_t t_count = sizes.t_count, hidden = sizes.hidden, k = sizes.k;
  const int64_t e_count = sizes.e_count;

  // Token lists per expert, in token order.
  std::vector<std::vector<int32_t>> rows(static_cast<std::size_t>(e_count));
  std::vector<std::vector<float>> scales(static_cast<std::size_t>(e_count));
  const int32_t* pe = experts.data<int32_t>();
  const float* pw = weights.data<float>();
  for (int64_t t = 0; t < t_count; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = pe[t * k + j];
      REFINERY_CHECK(e >= 0 && e < e_count, "moe: expert ", e, " of ", e_count);
      rows[e].push_back(static_cast<int32_t>(t));
      scales[e].push_back(pw[t * k + j]);
    }
  std::vector<int64_t> active;
  for (int64_t e = 0; e < e_count; ++e)
    if (!rows[e].empty()) active.push_back(e);

  std::vector<Tensor> outputs(static_cast<std::size_t>(e_count));
  const int64_t n_active = static_cast<int64_t>(active.size());
  const int64_t work = t_count * k * hidden * expert_weights[0].gate.out_features() * 3;
#pragma omp parallel for schedule(dynamic) if (n_active > 1 && work >= (int64_t{1} << 18))
  for (int64_t a = 0; a < n_active; ++a) {
    const int64_t e = active[a];
    const ExpertWeights& w = expert_weights[e];
    const int64_t n = static_cast<int64_t>(rows[e].size()), inter = w.gate.out_features();
    Tensor idx = Tensor::copy_of(DType::kI32, {n}, rows[e].data());
    Tensor xe = empty(DType::kF32, {n, hidden});
    gather_rows(x, idx, xe);
    Tensor g = empty(DType::kF32, {n, inter}), u = empty(DType::kF32, {n, inter});
    linear(xe, w.gate, g);
    linear(xe, w.up, u);
    swiglu(g, u, g);
    Tensor out = empty(DType::kF32, {n, hidden});
    linear(g, w.down, out);
    outputs[e] = out;
  }
  // accumulate: onto y's content (the shared experts' output), expert by expert as below.
  if (!accumulate) fill_zero(y);
  for (int64_t e : active) {
    const int64_t n = static_cast<int64_t>(rows[e].size());
    scatter_add_rows(outputs[e], Tensor::copy_of(DType::kI32, {n}, rows[e].data()),
                     Tensor::copy_of(DType::kF32, {n}, scales[e].data()), y);
  }
}

}  // namespace refinery::backend::cpu
