// AWQ step 4 (awq.hpp): the per-group clip search, AutoAWQ's _compute_best_clip. For one linear
// W [out, in] with sampled (scaled) input rows X [n, in] and each quantization group g of
// `gs` inputs:
//   reference  Y_g = X_g · W_gᵀ                   [n, out]  (the group's partial output)
//   candidate  m_i = max |W_g[o, :]| · (1 − i/grid) for i < max_shrink · grid,
//              Q_i = fake_quantize(clamp(W_g, −m_i, m_i)),  error_i[o] = mean_t (X_g · Q_iᵀ − Y_g)²
//   W_g[o, :] := clamp(W_g[o, :], ±m_best[o])
// The products run as Eigen GEMMs (f32), one group at a time.
#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <limits>

#include "quantize/awq_layer.hpp"

namespace refinery::quantize::awq_detail {

void search_clip(LayerState& st, const std::string& prefix, const std::vector<float>& x,
                 int64_t n) {
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  HostMatrix& w = st.work.at(prefix);
  const int gs = group_size_of(st, prefix);
  if (gs == 0 || n == 0) return;
  const int64_t out = w.rows, in = w.cols;
  const int steps = static_cast<int>(st.options.max_shrink * st.options.clip_grid);
  GroupQuantSpec spec = st.options.spec;
  spec.group_size = gs;
  Eigen::Map<const RowMatrix> xm(x.data(), n, in);
  Eigen::Map<RowMatrix> wm(w.values.data(), out, in);

  RowMatrix wg(out, gs), cand(out, gs);
  for (int64_t c0 = 0; c0 < in; c0 += gs) {
    wg = wm.middleCols(c0, gs);
    const RowMatrix xg = xm.middleCols(c0, gs);
    const RowMatrix reference = xg * wg.transpose();  // [n, out]
    const Eigen::VectorXf org_max = wg.cwiseAbs().rowwise().maxCoeff();
    Eigen::VectorXf best_max = org_max;
    Eigen::VectorXd best_err = Eigen::VectorXd::Constant(out, std::numeric_limits<double>::infinity());
    for (int i = 0; i < steps; ++i) {
      const float shrink = 1.0f - static_cast<float>(i) / static_cast<float>(st.options.clip_grid);
#pragma omp parallel for schedule(static)
      for (int64_t o = 0; o < out; ++o) {
        const float m = org_max[o] * shrink;
        for (int j = 0; j < gs; ++j) cand(o, j) = std::clamp(wg(o, j), -m, m);
      }
      fake_quantize(cand.data(), out, gs, spec, prefix);
      const RowMatrix diff = xg * cand.transpose() - reference;  // [n, out]
#pragma omp parallel for schedule(static)
      for (int64_t o = 0; o < out; ++o) {
        const double err = static_cast<double>(diff.col(o).squaredNorm()) / static_cast<double>(n);
        if (err < best_err[o]) {
          best_err[o] = err;
          best_max[o] = org_max[o] * shrink;
        }
      }
    }
    for (int64_t o = 0; o < out; ++o)
      for (int j = 0; j < gs; ++j)
        wm(o, c0 + j) = std::clamp(wg(o, j), -best_max[o], best_max[o]);
  }
}

}  // namespace refinery::quantize::awq_detail
