// linear: y[T, out] = x[T, in] · Wᵀ + b.
//
// Design: the weight is processed in tiles of consecutive output rows. Each tile is converted to
// f32 into a per-thread buffer (bf16/f16: exact widening; FP8 block: e4m3 value times the block's
// scale_inv) and multiplied with one Eigen GEMM, y[:, tile] = x · tileᵀ; f32 weights are used in
// place. Tiles run in parallel (OpenMP), so decode (T = 1, memory bound on reading W) and prefill
// (compute bound) both use all cores, and no permanent f32 copy of any weight exists.
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cstring>
#include <variant>

#include "engine/backend/awq_dequant.hpp"
#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMatrix>;
using Map = Eigen::Map<RowMatrix>;

const std::array<float, 256>& e4m3_values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) t[b] = f8e4m3_to_f32(static_cast<uint8_t>(b));
    return t;
  }();
  return table;
}

// Below this many multiply-adds a linear runs on one thread: a parallel region costs more.
constexpr int64_t kParallelWork = int64_t{1} << 18;

// Rows per tile: about 4 MiB of f32 weights, 32..512 rows. Each tile's GEMM re-packs x, so tiles
// must be wide enough that packing (T x in) stays small next to the product (T x in x rows).
int64_t dense_tile_rows(int64_t in) {
  return std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(in, 1), 32, 512);
}

// bf16 -> f32 is a 16-bit shift; done here in a loop the compiler vectorizes (the decode path
// converts every weight byte once per token). Other dtypes use the generic exact conversion.
void widen_to_f32(DType dt, const std::byte* src, float* dst, std::size_t count) {
  if (dt != DType::kBF16) return convert_to_f32(dt, src, dst, count);
  for (std::size_t i = 0; i < count; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    const uint32_t bits = static_cast<uint32_t>(h) << 16;
    std::memcpy(dst + i, &bits, 4);
  }
}

// y[:, r0 : r0 + n] = x · w_tileᵀ with w_tile [n, in] f32 row-major.
void gemm_tile(const ConstMap& x, const float* w_tile, int64_t n, int64_t r0, Map& y) {
  ConstMap w(w_tile, n, x.cols());
  if (x.rows() == 1) {
    // GEMV: one dot product per row, cheaper than a GEMM's packing.
    y.block(0, r0, 1, n).noalias() = (w * x.row(0).transpose()).transpose();
  } else {
    y.middleCols(r0, n).noalias() = x * w.transpose();
  }
}

void linear_dense(const ConstMap& x, const DenseWeight& dw, Map& y) {
  const Tensor& w = dw.weight;
  const int64_t out = w.size(0), in = w.size(1);
  const int64_t tile = dense_tile_rows(in);
  const int64_t tiles = (out + tile - 1) / tile;
  const DType dt = w.dtype();
  const auto* base = static_cast<const std::byte*>(w.data());
  const std::size_t row_bytes = dtype_bytes_for(dt, static_cast<std::size_t>(in));
  const bool aligned_f32 =
      dt == DType::kF32 && reinterpret_cast<uintptr_t>(base) % alignof(float) == 0;
#pragma omp parallel if (tiles > 1 && x.rows() * in * out >= kParallelWork && !omp_in_parallel())
  {
    std::vector<float> buffer;
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * tile, n = std::min(tile, out - r0);
      const float* w_tile;
      if (aligned_f32) {
        w_tile = reinterpret_cast<const float*>(base + r0 * row_bytes);
      } else {
        buffer.resize(static_cast<std::size_t>(n * in));
        widen_to_f32(dt, base + r0 * row_bytes, buffer.data(), buffer.size());
        w_tile = buffer.data();
      }
      gemm_tile(x, w_tile, n, r0, y);
    }
  }
}

void linear_fp8(const ConstMap& x, const Fp8BlockWeight& fw, Map& y) {
  const int64_t out = fw.weight.size(0), in = fw.weight.size(1);
  const int64_t bo = fw.block_out, bi = fw.block_in;
  const int64_t tiles = (out + bo - 1) / bo;  // one tile per block row: one scale row each
  const int64_t scale_cols = (in + bi - 1) / bi;
  const auto* q = static_cast<const uint8_t*>(fw.weight.data());
  const std::vector<float> scale_values =
      to_f32_vector(fw.scale_inv);  // [ceil(out/bo), ceil(in/bi)]
  const float* scales = scale_values.data();
  const auto& lut = e4m3_values();
#pragma omp parallel if (tiles > 1 && x.rows() * in * out >= kParallelWork && !omp_in_parallel())
  {
    std::vector<float> buffer;
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * bo, n = std::min(bo, out - r0);
      buffer.resize(static_cast<std::size_t>(n * in));
      const float* srow = scales + t * scale_cols;
      for (int64_t r = 0; r < n; ++r) {
        const uint8_t* src = q + (r0 + r) * in;
        float* dst = buffer.data() + r * in;
        for (int64_t c0 = 0, b = 0; c0 < in; c0 += bi, ++b) {
          const float s = srow[b];
          const int64_t c1 = std::min(in, c0 + bi);
          for (int64_t c = c0; c < c1; ++c) dst[c] = lut[src[c]] * s;
        }
      }
      gemm_tile(x, buffer.data(), n, r0, y);
    }
  }
}

// AWQ: each tile of output rows (a multiple of the pack factor, so a tile owns whole words) is
// dequantized into the per-thread buffer by awq_dequantize_rows, then multiplied like a dense tile.
void linear_awq(const ConstMap& x, const AwqWeight& aw, Map& y) {
  const int64_t out = aw.out, in = aw.in;
  const int64_t pack = awq_pack_factor(aw.bits);
  const int64_t tile = std::max<int64_t>(pack, dense_tile_rows(in) / pack * pack);
  const int64_t tiles = (out + tile - 1) / tile;
#pragma omp parallel if (tiles > 1 && x.rows() * in * out >= kParallelWork && !omp_in_parallel())
  {
    std::vector<float> buffer;
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t r0 = t * tile, n = std::min(tile, out - r0);
      buffer.resize(static_cast<std::size_t>(n * in));
      awq_dequantize_rows(aw, r0, n, buffer.data());
      gemm_tile(x, buffer.data(), n, r0, y);
    }
  }
}

}  // namespace

void CpuBackend::linear(const Tensor& x, const LinearWeight& w, Tensor& y) {
  const LinearSizes sizes = check_linear(Device::kCPU, x, w, y);
  const int64_t rows = sizes.rows, in = sizes.in, out = sizes.out;
  ConstMap xm(x.data<float>(), rows, in);
  Map ym(y.mutable_data<float>(), rows, out);
  if (rows == 0) return;
  std::visit(
      [&](const auto& storage) {
        using S = std::decay_t<decltype(storage)>;
        if constexpr (std::is_same_v<S, DenseWeight>)
          linear_dense(xm, storage, ym);
        else if constexpr (std::is_same_v<S, Fp8BlockWeight>)
          linear_fp8(xm, storage, ym);
        else
          linear_awq(xm, storage, ym);
      },
      w.storage);
  if (w.bias.defined()) {
    REFINERY_CHECK(w.bias.numel() == out, "linear ", w.name, ": bias must have ", out, " elements");
    const std::vector<float> b = to_f32_vector(w.bias);
    float* py = y.mutable_data<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < out; ++c) py[r * out + c] += b[c];
  }
}

}  // namespace refinery::backend::cpu
