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

void clamp_groups(const std::vector<float>& w, std::vector<float>& out_values, int64_t out,
                  int64_t in, int gs, std::span<const float> ratios) {
  const int64_t groups = in / gs;
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < groups; ++g) {
      const float* src = w.data() + o * in + g * gs;
      float* dst = out_values.data() + o * in + g * gs;
      float lo = src[0], hi = src[0];
      for (int j = 1; j < gs; ++j) {
        lo = std::min(lo, src[j]);
        hi = std::max(hi, src[j]);
      }
      const float r = ratios.size() == 1 ? ratios[0] : ratios[static_cast<std::size_t>(o * groups + g)];
      // Shrink the range toward 0 at both ends; an end on the far side of 0 stays (the group
      // holds only positive or only negative values there).
      const float a = lo < 0.0f ? r * lo : lo, b = hi > 0.0f ? r * hi : hi;
      for (int j = 0; j < gs; ++j) dst[j] = std::clamp(src[j], a, b);
    }
}

void clamp_groups(const std::vector<float>& w, std::vector<float>& out_values, int64_t out,
                  int64_t in, int gs, float ratio) {
  clamp_groups(w, out_values, out, in, gs, std::span<const float>(&ratio, 1));
}

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
  const bool asym = st.options.asymmetric_clip;
  std::vector<float> clamped(asym ? w.values.size() : 0);
  for (int i = 0; i < steps; ++i) {
    backend::FakeQuantSpec spec{st.options.spec.bits, gs, st.options.spec.zero_point,
                                1.0f - static_cast<float>(i) / static_cast<float>(st.options.clip_grid)};
    if (asym) {
      // Each group clamped to [r·min, r·max] on the host, then quantized as it is (ratio 1).
      clamp_groups(w.values, clamped, out, in, gs, spec.clip_ratio);
      backend::FakeQuantSpec plain = spec;
      plain.clip_ratio = 1.0f;
      be.group_fake_quantize(be.upload(Tensor::copy_of(DType::kF32, {out, in}, clamped.data())),
                             Tensor(), plain, q);
    } else {
      be.group_fake_quantize(w_dev, Tensor(), spec, q);
    }
    be.group_output_errors(x_dev, q, w_dev, gs, err);
    const Tensor host = be.download(err);
    const float* pe = host.data<float>();
    for (std::size_t k = 0; k < best_err.size(); ++k)
      if (pe[k] < best_err[k]) {
        best_err[k] = pe[k];
        best_ratio[k] = spec.clip_ratio;
      }
  }
  if (asym) {
    clamp_groups(w.values, w.values, out, in, gs, best_ratio);
    return;
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
