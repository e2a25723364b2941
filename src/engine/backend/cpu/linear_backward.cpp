// linear_backward: the gradients of y[T, out] = x[T, in] · Wᵀ + b.
//   dx[T, in] += dy[T, out] · W,   dw[out, in] += dyᵀ · x,   db[out] += Σ_t dy[t, :].
//
// Design: two phases, each split into fixed tiles that one thread owns, so no element is summed by
// two threads and the result does not depend on the thread count.
//  - dw (and db) by tiles of consecutive output rows: dw[tile, :] += dy[:, tile]ᵀ · x, one Eigen
//    GEMM per tile; W itself is not read.
//  - dx by tiles of input columns: W[:, tile] (bf16/f16 widened to f32 into a per-thread buffer,
//    f32 used in place through a strided map) and dx[:, tile] += dy · W[:, tile]. Every weight
//    byte is converted once; no f32 copy of the whole weight exists (as in linear.cpp).
// Compute bound for training shapes (T in the thousands), like the forward's prefill.
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <variant>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMatrix>;
using Map = Eigen::Map<RowMatrix>;
using Strided = Eigen::OuterStride<>;
using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Strided>;
using StridedMap = Eigen::Map<RowMatrix, 0, Strided>;

// Below this many multiply-adds a phase runs on one thread.
constexpr int64_t kParallelWork = int64_t{1} << 18;

// Tile widths: about 4 MiB of f32 per tile (the other dimension times the width), 32..512.
int64_t tile_width(int64_t other) {
  return std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(other, 1), 32, 512);
}

// dw[out, in] += dyᵀ · x and db[out] += column sums of dy, by tiles of output rows.
void weight_gradients(const ConstMap& x, const ConstMap& dy, Tensor& dw, Tensor& db) {
  const int64_t rows = x.rows(), in = x.cols(), out = dy.cols();
  const int64_t tile = tile_width(in + rows);
  const int64_t tiles = (out + tile - 1) / tile;
  float* pdw = dw.defined() ? dw.mutable_data<float>() : nullptr;
  float* pdb = db.defined() ? db.mutable_data<float>() : nullptr;
#pragma omp parallel for schedule(dynamic) if (tiles > 1 && rows * in * out >= kParallelWork && \
                                                   !omp_in_parallel())
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t r0 = t * tile, n = std::min(tile, out - r0);
    if (pdw != nullptr) {
      Map dwm(pdw + r0 * in, n, in);
      dwm.noalias() += dy.middleCols(r0, n).transpose() * x;
    }
    if (pdb != nullptr) {
      // Column sums in double, in token order.
      std::vector<double> sums(static_cast<std::size_t>(n), 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        const float* dyr = dy.data() + r * out + r0;
        for (int64_t c = 0; c < n; ++c) sums[c] += dyr[c];
      }
      for (int64_t c = 0; c < n; ++c) pdb[r0 + c] += static_cast<float>(sums[c]);
    }
  }
}

// dx[T, in] += dy · W, by tiles of input columns.
void input_gradient(const ConstMap& dy, const Tensor& w, Tensor& dx) {
  const int64_t rows = dy.rows(), out = w.size(0), in = w.size(1);
  const int64_t tile = tile_width(out + rows);
  const int64_t tiles = (in + tile - 1) / tile;
  const DType dt = w.dtype();
  const auto* base = static_cast<const std::byte*>(w.data());
  const bool aligned_f32 =
      dt == DType::kF32 && reinterpret_cast<uintptr_t>(base) % alignof(float) == 0;
  float* pdx = dx.mutable_data<float>();
#pragma omp parallel if (tiles > 1 && rows * in * out >= kParallelWork && !omp_in_parallel())
  {
    std::vector<float> buffer;
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t c0 = t * tile, n = std::min(tile, in - c0);
      StridedMap dxm(pdx + c0, rows, n, Strided(in));
      if (aligned_f32) {
        ConstStridedMap wm(reinterpret_cast<const float*>(base) + c0, out, n, Strided(in));
        dxm.noalias() += dy * wm;
      } else {
        buffer.resize(static_cast<std::size_t>(out * n));
        for (int64_t r = 0; r < out; ++r)
          convert_to_f32(dt, base + dtype_bytes_for(dt, static_cast<std::size_t>(r * in + c0)),
                         buffer.data() + r * n, static_cast<std::size_t>(n));
        ConstMap wm(buffer.data(), out, n);
        dxm.noalias() += dy * wm;
      }
    }
  }
}

}  // namespace

void CpuBackend::linear_backward(const Tensor& x, const LinearWeight& w, const Tensor& dy,
                                 Tensor& dx, Tensor& dw, Tensor& db, GradWrite dx_write,
                                 GradWrite dw_write) {
  const auto* dense = std::get_if<DenseWeight>(&w.storage);
  if (w.defined() && dense == nullptr)
    throw_internal_error("linear_backward needs a dense weight: ", w.name, " is ", w.describe());
  // check_linear: x [T, in] and dy [T, out] f32 (dy in the place of the forward's y).
  const LinearSizes sizes = check_linear(Device::kCPU, x, w, dy);
  const int64_t rows = sizes.rows, in = sizes.in, out = sizes.out;
  const DType wdt = dense->weight.dtype();
  REFINERY_CHECK(wdt == DType::kF32 || wdt == DType::kBF16 || wdt == DType::kF16,
                 "linear_backward ", w.name, ": dense weight must be f32, bf16 or f16, found ",
                 dense->weight.describe());
  if (dx.defined()) require_f32(dx, {rows, in}, "linear_backward dx");
  if (dw.defined()) require_f32(dw, {out, in}, "linear_backward dw");
  if (db.defined()) require_f32(db, {out}, "linear_backward db");
  // kOverwrite: zero first, then the adding code below (the same values as adding into zeros).
  if (dx.defined() && dx_write == GradWrite::kOverwrite) fill_zero(dx);
  if (dw.defined() && dw_write == GradWrite::kOverwrite) fill_zero(dw);
  if (rows == 0) return;
  ConstMap xm(x.data<float>(), rows, in);
  ConstMap dym(dy.data<float>(), rows, out);
  if (dw.defined() || db.defined()) weight_gradients(xm, dym, dw, db);
  if (dx.defined()) input_gradient(dym, dense->weight, dx);
}

}  // namespace refinery::backend::cpu
