// GPTQ rounding into group_quant's format (see gptq.hpp for the algorithm and its references).
#include "quantize/gptq.hpp"

#include <Eigen/Cholesky>
#include <Eigen/Dense>
#include <algorithm>
#include <cmath>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"

namespace refinery::quantize {

namespace {

using MatrixD = Eigen::MatrixXd;  // column-major: GPTQ walks W column by column

// The stored code of w for a group with fp16 scale `scale` and stored zero `zero`: the same f32
// formula as group_quant.cpp's code_of (nearbyint is round-half-to-even, like torch.round).
int code_of(float w, float scale, int zero, const GroupQuantSpec& spec) {
  const float q = std::nearbyint(w / scale);
  if (spec.zero_point)
    return static_cast<int>(
        std::clamp(q + static_cast<float>(zero), 0.0f, static_cast<float>((1 << spec.bits) - 1)));
  const float half = static_cast<float>(1 << (spec.bits - 1));
  return static_cast<int>(std::clamp(q, -half, half - 1.0f)) + zero;
}

// U with H⁻¹ = UᵀU for the damped H (damping retried x10 when H is not positive definite).
MatrixD inverse_cholesky_upper(MatrixD h, double damp, std::string_view what, double& damp_used) {
  const int64_t n = h.rows();
  const double mean_diag = h.diagonal().mean();
  for (int attempt = 0; attempt < 7; ++attempt, damp *= 10.0) {
    MatrixD hd = h;
    hd.diagonal().array() += damp * mean_diag;
    const Eigen::LLT<MatrixD> llt(hd);
    if (llt.info() != Eigen::Success) continue;
    const MatrixD hinv = llt.solve(MatrixD::Identity(n, n));
    const Eigen::LLT<MatrixD> llt_inv(hinv);
    if (llt_inv.info() != Eigen::Success) continue;
    if (attempt > 0)
      log::warn("GPTQ: ", what, ": the input Hessian needed damping ", damp,
                " x mean(diag) to be positive definite");
    damp_used = damp;
    return llt_inv.matrixU();
  }
  throw_internal_error("GPTQ: ", what, ": the input Hessian [", n, ", ", n,
                       "] is not positive definite even with damping ", damp / 10.0,
                       " x mean(diag); its calibration inputs may hold NaN/inf");
}

}  // namespace

HessianAccumulator::HessianAccumulator(int64_t in)
    : in_(in), sum_(static_cast<std::size_t>(in * in), 0.0) {}

void HessianAccumulator::add(const float* x, int64_t rows) {
  if (rows <= 0) return;
  // f32 GEMM per batch of rows (fast), summed in f64 across batches: the batch sums are at most
  // a few thousand rows, the total may be millions.
  constexpr int64_t kBatch = 2048;
  using RowsF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> sum(
      sum_.data(), in_, in_);
  for (int64_t r0 = 0; r0 < rows; r0 += kBatch) {
    const int64_t k = std::min(kBatch, rows - r0);
    const Eigen::Map<const RowsF> xb(x + r0 * in_, k, in_);
    Eigen::MatrixXf part(in_, in_);
    part.noalias() = xb.transpose() * xb;
    sum += part.cast<double>();
  }
  rows_ += rows;
}

std::vector<double> HessianAccumulator::hessian() const {
  std::vector<double> h(sum_.size(), 0.0);
  if (rows_ == 0) return h;
  const double f = 2.0 / static_cast<double>(rows_);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = f * sum_[i];
  return h;
}

QuantizedMatrix gptq_quantize(const float* w, int64_t out, int64_t in, std::span<const double> h,
                              const GroupQuantSpec& spec, const GptqOptions& options,
                              std::string_view what, GptqStats* stats) {
  validate_spec(spec);
  if (out <= 0 || in <= 0 || in % spec.group_size != 0)
    throw_user_error(what, ": a weight [", out, ", ", in, "] cannot be quantized with group size ",
                     spec.group_size, " (the input size must be a positive multiple of it)");
  if (static_cast<int64_t>(h.size()) != in * in)
    throw_internal_error("GPTQ: ", what, ": the Hessian holds ", h.size(), " values, expected ",
                         in, " x ", in);
  const int64_t g = spec.group_size, groups = in / g;
  // Blocks hold whole groups, so a group's range is read from one block's working copy.
  const int64_t block = std::max<int64_t>(g, (std::max(options.block_size, 1) + g - 1) / g * g);

  MatrixD hm = Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic,
                                              Eigen::RowMajor>>(h.data(), in, in);
  MatrixD wd = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic,
                                              Eigen::RowMajor>>(w, out, in)
                   .cast<double>();
  GptqStats st;
  for (int64_t i = 0; i < in; ++i)
    if (hm(i, i) == 0.0) {  // an input that never fires: its weights cannot matter
      hm(i, i) = 1.0;
      wd.col(i).setZero();
      ++st.dead_columns;
    }
  const MatrixD u = inverse_cholesky_upper(std::move(hm), options.damp, what, st.damp_used);

  QuantizedMatrix q;
  q.out = out;
  q.in = in;
  q.spec = spec;
  q.codes.assign(static_cast<std::size_t>(out * in), 0);
  q.zeros.assign(static_cast<std::size_t>(out * groups), 0);
  q.scales.assign(static_cast<std::size_t>(out * groups), 0.0f);

  // The group ranges (scale, zero) of group k from f32 weights src [out, g] (row-major): exactly
  // group_quant's, by quantizing the group as a one-group matrix.
  std::vector<float> slice(static_cast<std::size_t>(out * g));
  auto set_params = [&](int64_t k, const std::vector<float>& src) {
    const QuantizedMatrix p = quantize_groups(src.data(), out, g, spec, what);
    for (int64_t r = 0; r < out; ++r) {
      q.scales[static_cast<std::size_t>(r * groups + k)] = p.scales[static_cast<std::size_t>(r)];
      q.zeros[static_cast<std::size_t>(r * groups + k)] = p.zeros[static_cast<std::size_t>(r)];
    }
  };
  if (options.static_groups)
    for (int64_t k = 0; k < groups; ++k) {
      for (int64_t r = 0; r < out; ++r)
        for (int64_t i = 0; i < g; ++i)
          slice[static_cast<std::size_t>(r * g + i)] = static_cast<float>(wd(r, k * g + i));
      set_params(k, slice);
    }

  Eigen::VectorXd err(out);
  for (int64_t i1 = 0; i1 < in; i1 += block) {
    const int64_t i2 = std::min(in, i1 + block), count = i2 - i1;
    MatrixD w1 = wd.middleCols(i1, count);  // the block, updated column by column
    MatrixD e1(out, count);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i, k = col / g;
      if (!options.static_groups && col % g == 0) {
        for (int64_t r = 0; r < out; ++r)
          for (int64_t j = 0; j < g; ++j)
            slice[static_cast<std::size_t>(r * g + j)] = static_cast<float>(w1(r, i + j));
        set_params(k, slice);
      }
      const double d = u(col, col);
      for (int64_t r = 0; r < out; ++r) {
        const std::size_t pk = static_cast<std::size_t>(r * groups + k);
        const float scale = q.scales[pk];
        const int zero = q.zeros[pk];
        const int code = code_of(static_cast<float>(w1(r, i)), scale, zero, spec);
        q.codes[static_cast<std::size_t>(r * in + col)] = static_cast<uint8_t>(code);
        const double deq = static_cast<double>(code - zero) * static_cast<double>(scale);
        err(r) = (w1(r, i) - deq) / d;
      }
      if (i + 1 < count)
        w1.rightCols(count - i - 1).noalias() -=
            err * u.row(col).segment(col + 1, count - i - 1);
      e1.col(i) = err;
    }
    if (i2 < in) wd.rightCols(in - i2).noalias() -= e1 * u.block(i1, i2, count, in - i2);
  }
  if (stats) *stats = st;
  return q;
}

}  // namespace refinery::quantize
