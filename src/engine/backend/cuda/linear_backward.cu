// linear_backward on the GPU (dense weights): with x [T, in], W [out, in], dy [T, out],
//   dx[T, in] += dy · W,   dw[out, in] (f32) += dyᵀ · x,   db[out] (f32) += Σ_t dy[t, :].
// Precision follows the forward (linear.cu):
//   bf16 W  two cuBLASLt GEMMs (gemm_bf16_cm) with bf16 operands (x, dy rounded to bf16 when f32)
//           and f32 accumulation: dw straight into the f32 gradient with beta = 1; dx into the
//           activation gradient with beta = 1 (one bf16 rounding per call when dx is bf16).
//   f32 W   plain f32 GEMMs (cublasGemmEx, CUBLAS_COMPUTE_32F, no TF32), x and dy widened to f32
//           when bf16: agrees with the CPU to f32 rounding (the op tests rely on it).
//   f16 W   as f32, W widened to f32 in one scratch (dx only; dw never reads W).
// In cuBLAS's column-major terms (row-major [r, c] = column-major [c, r]):
//   dxᵀ[in, T]  = Wᵀ[in, out] · dyᵀ[out, T]:  A = W (ld in, N), B = dy (ld out, N)
//   dwᵀ[in, out] = xᵀ[in, T] · dy[T, out]:    A = x (ld in, N), B = dy (ld out, T)
// db: a fixed number of row chunks each sum their rows per column into an f32 partial
// [chunks, out] (rows in order), then add_column_sums adds the chunks in order: deterministic.
#include <algorithm>
#include <variant>

#include "engine/backend/cuda/cublas_check.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int64_t kBiasChunks = 64;

// partial[chunk, c] = Σ_{t in chunk} dy[t, c]; grid (column blocks, chunks).
template <typename T>
__global__ void bias_partial_kernel(const T* dy, int64_t rows, int64_t out, int64_t rows_per_chunk,
                                    float* partial) {
  const int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (c >= out) return;
  const int64_t r0 = blockIdx.y * rows_per_chunk;
  const int64_t r1 = min(rows, r0 + rows_per_chunk);
  float acc = 0.0f;
  for (int64_t r = r0; r < r1; ++r) acc += to_f32(dy[r * out + c]);
  partial[blockIdx.y * out + c] = acc;
}

__global__ void widen_f16_kernel(const __half* w, int64_t n, float* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    out[i] = __half2float(w[i]);
}

// Column-major f32 C[m, n] = op(A) · op(B) + beta · C (plain f32, no TF32).
void gemm_f32_cm(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t m, int64_t n,
                 int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, float beta) {
  constexpr int64_t kMax = int64_t{1} << 31;
  REFINERY_CHECK(m < kMax && n < kMax && k < kMax && lda < kMax && ldb < kMax && ldc < kMax,
                 "linear_backward: dimensions exceed cuBLAS's int range");
  const float alpha = 1.0f;
  REFINERY_CUBLAS_CHECK(cublasGemmEx(
      handle, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha, a, CUDA_R_32F,
      static_cast<int>(lda), b, CUDA_R_32F, static_cast<int>(ldb), &beta, c, CUDA_R_32F,
      static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void CudaBackend::linear_backward(const Tensor& x, const LinearWeight& w, const Tensor& dy,
                                  Tensor& dx, Tensor& dw, Tensor& db, GradWrite dx_write,
                                  GradWrite dw_write) {
  OpTimer timer(profiler_, stream_,
                profiler_.enabled()
                    ? "linear_backward " + w.name.substr(w.name.rfind('.') + 1)
                    : "");
  const LinearSizes sizes = check_linear(Device::kCUDA, x, w, dy);
  const int64_t rows = sizes.rows, in = sizes.in, out = sizes.out;
  const auto* dense = std::get_if<DenseWeight>(&w.storage);
  REFINERY_CHECK(dense != nullptr, "linear_backward ", w.name,
                 ": only dense weights have a backward (quantized fp8/AWQ weights are frozen), "
                 "found ", w.describe());
  const DType wdtype = dense->weight.dtype();
  REFINERY_CHECK(wdtype == DType::kF32 || wdtype == DType::kBF16 || wdtype == DType::kF16,
                 "linear_backward ", w.name, ": dense weights must be f32, bf16 or f16, found ",
                 dtype_name(wdtype));
  if (dx.defined()) {
    backend::require_float(Device::kCUDA, dx, {rows, in}, "linear_backward dx");
    require_same_dtype(x, dx, "linear_backward x and dx");
  }
  if (dw.defined()) require_f32(dw, {out, in}, "linear_backward dw");
  if (db.defined()) require_f32(db, {out}, "linear_backward db");
  const bool overwrite_dx = dx.defined() && dx_write == GradWrite::kOverwrite;
  const bool overwrite_dw = dw.defined() && dw_write == GradWrite::kOverwrite;
  if (rows == 0 || out == 0) {  // nothing to add: an overwritten gradient is zero
    if (overwrite_dx) fill_zero(dx);
    if (overwrite_dw) fill_zero(dw);
    return;
  }

  const bool want_dx = dx.defined() && in > 0, want_dw = dw.defined() && in > 0;
  if (want_dx || want_dw) {
    if (wdtype == DType::kBF16) {
      // The training path: kOverwrite is beta = 0 (the old gradient is not read).
      const Tensor xb = want_dw ? as_dtype(x, DType::kBF16, "linear_backward (x to bf16)") : x;
      const Tensor dyb = as_dtype(dy, DType::kBF16, "linear_backward (dy to bf16)");
      if (want_dx) {
        Tensor keep;
        const void* wb = bf16_weight_rows(w, 0, out, keep);
        gemm_bf16_cm(false, false, in, rows, out, wb, in, dyb.data(), out, dx.mutable_data(),
                     dx.dtype() == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF, in, 1.0f,
                     overwrite_dx ? 0.0f : 1.0f);
      }
      if (want_dw)
        gemm_bf16_cm(false, true, in, out, rows, xb.data(), in, dyb.data(), out,
                     dw.mutable_data(), CUDA_R_32F, in, 1.0f, overwrite_dw ? 0.0f : 1.0f);
    } else {
      // f32/f16 weights (tests, f32 backends): zero first, then the adding code.
      if (overwrite_dx) fill_zero(dx);
      if (overwrite_dw) fill_zero(dw);
      const Tensor dy32 = as_dtype(dy, DType::kF32, "linear_backward (dy to f32)");
      if (want_dx) {
        const Tensor wd = on_device(dense->weight);
        Tensor w32 = wd;
        if (wdtype == DType::kF16) {
          w32 = empty(DType::kF32, {out, in});
          widen_f16_kernel<<<grid_for(out * in), kThreads, 0, stream_>>>(
              static_cast<const __half*>(wd.data()), out * in, w32.mutable_data<float>());
          REFINERY_CUDA_AFTER_LAUNCH(*this, "linear_backward (widen f16 weight)");
        }
        if (dx.dtype() == DType::kF32) {
          gemm_f32_cm(cublas_, false, false, in, rows, out, w32.data<float>(), in,
                      dy32.data<float>(), out, dx.mutable_data<float>(), in, 1.0f);
        } else {
          Tensor dx32 = empty(DType::kF32, {rows, in});
          gemm_f32_cm(cublas_, false, false, in, rows, out, w32.data<float>(), in,
                      dy32.data<float>(), out, dx32.mutable_data<float>(), in, 0.0f);
          accumulate_f32(dx32.data<float>(), rows * in, dx, "linear_backward (dx)");
        }
      }
      if (want_dw) {
        const Tensor x32 = as_dtype(x, DType::kF32, "linear_backward (x to f32)");
        gemm_f32_cm(cublas_, false, true, in, out, rows, x32.data<float>(), in,
                    dy32.data<float>(), out, dw.mutable_data<float>(), in, 1.0f);
      }
    }
  }

  if (db.defined()) {
    const int64_t chunks = std::min(rows, kBiasChunks);
    const int64_t per_chunk = (rows + chunks - 1) / chunks;
    Tensor partial = empty(DType::kF32, {chunks, out});
    const dim3 grid(static_cast<unsigned>((out + kThreads - 1) / kThreads),
                    static_cast<unsigned>(chunks));
    dispatch_activation(dy.dtype(), "linear_backward (db)", [&](auto tag) {
      using T = decltype(tag);
      bias_partial_kernel<T><<<grid, kThreads, 0, stream_>>>(
          static_cast<const T*>(dy.data()), rows, out, per_chunk, partial.mutable_data<float>());
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "linear_backward (db)");
    add_column_sums(partial.data<float>(), chunks, out, db.mutable_data<float>(),
                    "linear_backward (db sum)");
  }
}

}  // namespace refinery::backend::cuda
