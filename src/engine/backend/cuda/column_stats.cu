// Column statistics of an activation matrix on the GPU (backend.hpp, quantization section).
// column_abs_sums: x [n, cols] (f32 or bf16) -> sums[c] += Σ_r |x[r, c]| (f32 [cols]).
//
// Design: one block per 32 columns; its 16 warps split the rows (warp w takes rows w, w + 16, ...)
// and lane j owns column c0 + j, so a warp reads 32 consecutive elements of one row (coalesced).
// Each thread sums |x| in double in increasing row order (4 loads in flight per step, added in
// order), the 16 warp partials are added in warp order by warp 0, and the double total is added
// to sums[c] and rounded to f32 once. The order depends only on the shapes: the result is the
// same on every run and device. Against the CPU op (a sequential double sum per column) the double
// totals differ by ~n·2^-53 relative, so the f32 outputs agree to 1 ulp.
// Bound: memory; one pass over x, no scratch, no synchronization. With cols / 32 blocks (128 for a
// 4096-wide hidden state) the grid is about one wave and latency bound, ~0.1–0.5 ms per 100 MB
// chunk on an H100: small next to the GEMMs of the scale search it feeds.
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kColumnsPerBlock = 32;
constexpr int kRowWarps = 16;
constexpr int kUnroll = 4;

template <typename T>
__global__ void column_abs_sums_kernel(const T* x, int64_t n, int64_t cols, float* sums) {
  __shared__ double partial[kRowWarps][kColumnsPerBlock];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumnsPerBlock + lane;
  double acc = 0.0;
  if (c < cols) {
    constexpr int64_t kStep = kRowWarps;
    int64_t r = warp;
    for (; r + (kUnroll - 1) * kStep < n; r += kUnroll * kStep) {
      float v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = to_f32(x[(r + u * kStep) * cols + c]);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) acc += fabs(static_cast<double>(v[u]));
    }
    for (; r < n; r += kStep) acc += fabs(static_cast<double>(to_f32(x[r * cols + c])));
  }
  partial[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && c < cols) {
    double total = 0.0;
    for (int w = 0; w < kRowWarps; ++w) total += partial[w][lane];
    sums[c] = static_cast<float>(static_cast<double>(sums[c]) + total);
  }
}

}  // namespace

void CudaBackend::column_abs_sums(const Tensor& x, Tensor& sums) {
  OpTimer timer(profiler_, stream_, "column_abs_sums");
  REFINERY_CHECK(x.defined() && x.ndim() == 2, "column_abs_sums: x must be [n, cols], found ",
                 x.describe());
  const int64_t n = x.size(0), cols = x.size(1);
  require_float(Device::kCUDA, x, {n, cols}, "column_abs_sums x");
  require_f32(sums, {cols}, "column_abs_sums sums");
  if (n == 0 || cols == 0) return;
  const int64_t blocks = (cols + kColumnsPerBlock - 1) / kColumnsPerBlock;
  REFINERY_CHECK(blocks <= 0x7fffffff, "column_abs_sums: ", cols, " columns exceed the grid");
  float* ps = sums.mutable_data<float>();
  dispatch_activation(x.dtype(), "column_abs_sums", [&](auto tag) {
    using T = decltype(tag);
    column_abs_sums_kernel<T><<<static_cast<unsigned>(blocks), 32 * kRowWarps, 0, stream_>>>(
        static_cast<const T*>(x.data()), n, cols, ps);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "column_abs_sums");
}

}  // namespace refinery::backend::cuda
