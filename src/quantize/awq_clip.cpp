// AWQ step 4 (awq.hpp): the per-group clip search, AutoAWQ's _compute_best_clip. For one linear
// W [out, in] with sampled (scaled) input rows X [n, in] and each quantization group g:
//   for i < max_shrink · grid: ratio_i = 1 − i/grid,
//     Q_i = fake_quantize(clamp(W_g, ±ratio_i · max|W_g[o, :]|)),
//     error_i[o, g] = mean_t (X_g · (Q_i − W)_gᵀ)²          (Backend::group_output_errors)
//   W_g[o, :] := clamp(W_g[o, :], ±ratio_best · max|W_g[o, :]|)
// Both products run on the backend's device; only the [out, in/group] errors come back.
#include <algorithm>
#include <cmath>
#include <limits>

#include "quantize/awq_layer.hpp"

namespace refinery::quantize::awq_detail {

void search_clip(LayerState& st, const std::string& prefix, const std::vector<float>& x,
                 int64_t n) {
  backend::Backend& be = st.model.backend();
  HostMatrix& w = st.work.at(prefix);
  const int gs = group_size_of(st, prefix);
  if (gs == 0 || n == 0) return;
  const int64_t out = w.rows, in = w.cols, groups = in / gs;
  const int steps = static_cast<int>(st.options.max_shrink * st.options.clip_grid);
  const Tensor w_dev = be.upload(Tensor::copy_of(DType::kF32, {out, in}, w.values.data()));
  const Tensor x_dev = be.upload(Tensor::copy_of(DType::kF32, {n, in}, x.data()));
  std::vector<float> best_err(static_cast<std::size_t>(out * groups),
                              std::numeric_limits<float>::infinity());
  std::vector<float> best_ratio(best_err.size(), 1.0f);
  Tensor q = be.empty(DType::kF32, {out, in});
  Tensor err = be.empty(DType::kF32, {out, groups});
  for (int i = 0; i < steps; ++i) {
    backend::FakeQuantSpec spec{st.options.spec.bits, gs, st.options.spec.zero_point,
                                1.0f - static_cast<float>(i) / static_cast<float>(st.options.clip_grid)};
    be.group_fake_quantize(w_dev, Tensor(), spec, q);
    be.group_output_errors(x_dev, q, w_dev, gs, err);
    const Tensor host = be.download(err);
    const float* pe = host.data<float>();
    for (std::size_t k = 0; k < best_err.size(); ++k)
      if (pe[k] < best_err[k]) {
        best_err[k] = pe[k];
        best_ratio[k] = spec.clip_ratio;
      }
  }
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < groups; ++g) {
      float* row = w.values.data() + o * in + g * gs;
      float m = 0.0f;
      for (int j = 0; j < gs; ++j) m = std::max(m, std::fabs(row[j]));
      m *= best_ratio[static_cast<std::size_t>(o * groups + g)];
      for (int j = 0; j < gs; ++j) row[j] = std::clamp(row[j], -m, m);
    }
}

}  // namespace refinery::quantize::awq_detail
