#pragma once
// GPTQ-style error-compensating rounding (Frantar et al. 2022, "GPTQ"; the fasterquant loop of
// IST-DASLab/gptq and AutoGPTQ, without act-order) producing the SAME group format as
// group_quant.hpp (AutoAWQ's asymmetric/symmetric groups, fp16 scales rounded before the codes),
// so the output packs with pack_awq() unchanged and dequantizes with dequantize().
//
// Given a linear W [out, in] and its calibration inputs X [n, in], GPTQ rounds the input columns
// one at a time, left to right, and spreads each column's rounding error over the not yet rounded
// columns so that ||X·Wᵀ − X·Qᵀ|| stays small (plain RTN ignores the input correlations):
//   H = 2·XᵀX/n (f64); dead inputs (H_ii = 0): H_ii := 1 and W[:, i] := 0;
//   H += damp·mean(diag H)·I; U = upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU);
//   for each block of `block_size` columns [i1, i2):
//     for column i in the block:
//       at a group's first column: the group's scale/zero from the CURRENT (already updated)
//         weights of its group_size columns (group_quant's formulas; static_groups: from W
//         before any update instead);
//       q = dequantized code of W[:, i]; e = (W[:, i] − q) / U_ii;
//       W[:, j] −= e·U_ij for the block's columns j > i;
//     W[:, i2:] −= E·U[i1:i2, i2:]   (lazy batch update, E = the block's e columns)
// One difference from AutoGPTQ on purpose: it reads a group's range from the matrix without the
// current block's in-block updates, which matters only when a group starts inside a block
// (group_size < block_size, e.g. a g64 layer); we read the fully updated weights, which is what
// the algorithm means. With group_size == block_size == 128 both are the same.
// Numerics: H, its factors and the working weights are f64; codes use group_quant's f32 range
// and fp16 scale. A Cholesky failure (H not positive definite even after damping) retries with
// 10x the damping, up to 6 times, then throws an internal error.

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "quantize/group_quant.hpp"

namespace refinery::quantize {

struct GptqOptions {
  double damp = 0.01;        // fraction of mean(diag H) added to the diagonal
  int block_size = 128;      // columns per lazy batch update
  bool static_groups = false;  // group ranges from the input W (e.g. AWQ's clipped range)
};

// Σ xᵀx over calibration rows, accumulated in f64 (the inputs of one linear, or of several linears
// that read the same input: q/k/v, gate/up share one H).
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t in);
  // x: f32 [rows, in] row-major.
  void add(const float* x, int64_t rows);
  int64_t in() const { return in_; }
  int64_t rows() const { return rows_; }
  // 2·XᵀX/n, [in, in] row-major (all zeros when no row was added).
  std::vector<double> hessian() const;

 private:
  int64_t in_ = 0, rows_ = 0;
  std::vector<double> sum_;  // [in, in], XᵀX
};

struct GptqStats {
  double damp_used = 0.0;  // the damping fraction that gave a positive definite H
  int dead_columns = 0;    // inputs with H_ii = 0 (their weights quantize as 0)
};

// w: f32 [out, in] row-major; h: [in, in] row-major, symmetric (HessianAccumulator::hessian()).
// spec.group_size must divide in (else a user error naming `what`, as quantize_groups).
QuantizedMatrix gptq_quantize(const float* w, int64_t out, int64_t in, std::span<const double> h,
                              const GroupQuantSpec& spec, const GptqOptions& options = {},
                              std::string_view what = "weight", GptqStats* stats = nullptr);

}  // namespace refinery::quantize
