// Column statistics of an activation matrix (backend.hpp, quantization section).
// column_abs_sums: x [n, cols] -> sums[c] += Σ_r |x[r, c]|. Parallel over tiles of columns; each
// tile walks every row in order and sums in double, so a column's total is the plain sequential
// double sum over its rows (rounded to f32 once when added to sums): the same value for any
// thread count and equal to a naive double loop. Memory bound: one pass over x.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {

// Columns per task: 128 f32 (512 B, eight cache lines) per row keeps the strided walk over the
// rows prefetch friendly and leaves cols / 128 tasks to spread over the threads.
constexpr int64_t kTile = 128;

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {  // bf16: the upper half of an f32 (exact)
  return std::bit_cast<float>(static_cast<uint32_t>(p[i]) << 16);
}

template <typename T>
void abs_sums(const T* x, int64_t n, int64_t cols, float* sums) {
  const int64_t tiles = (cols + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if (tiles > 1 && n * cols > (int64_t{1} << 15))
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t c0 = t * kTile, width = std::min(kTile, cols - c0);
    double acc[kTile] = {};
    for (int64_t r = 0; r < n; ++r) {
      const int64_t base = r * cols + c0;
      for (int64_t j = 0; j < width; ++j) acc[j] += std::fabs(static_cast<double>(load(x, base + j)));
    }
    for (int64_t j = 0; j < width; ++j)
      sums[c0 + j] = static_cast<float>(static_cast<double>(sums[c0 + j]) + acc[j]);
  }
}

}  // namespace

void CpuBackend::column_abs_sums(const Tensor& x, Tensor& sums) {
  REFINERY_CHECK(x.defined() && x.ndim() == 2 && x.device() == Device::kCPU &&
                     (x.dtype() == DType::kF32 || x.dtype() == DType::kBF16),
                 "column_abs_sums: x must be an f32 or bf16 CPU tensor [n, cols], found ",
                 x.describe());
  const int64_t n = x.size(0), cols = x.size(1);
  require_f32(sums, {cols}, "column_abs_sums sums");
  if (n == 0 || cols == 0) return;
  float* out = sums.mutable_data<float>();
  if (x.dtype() == DType::kF32)
    abs_sums(x.data<float>(), n, cols, out);
  else
    abs_sums(static_cast<const uint16_t*>(x.data()), n, cols, out);
}

}  // namespace refinery::backend::cpu
