// linear on the GPU: y[T, out] = x[T, in] · Wᵀ (+ b) through cublasGemmEx with f32 accumulation
// (CUBLAS_COMPUTE_32F; no TF32). cuBLAS is column-major: row-major y[T, out] is column-major
// [out, T], so y = op(W)·x with W read transposed (row-major [out, in] is column-major [in, out]).
//
// Precision and data flow per weight format:
//   f32   W used in place; x f32. Plain f32 GEMM (agrees with the CPU to f32 rounding).
//   bf16  W used in place; x rounded to bf16 into a scratch buffer (relative error <= 2^-9 per
//         element of x, like a bf16 inference engine), bf16 x bf16 products summed in f32.
//   f16   x could overflow f16 (|x| > 65504), so W is widened to f32 instead, in chunks of rows
//         into a scratch buffer of at most kScratchElements, and each chunk runs an f32 GEMM.
//   fp8   the same chunked path: E4M3 x scale_inv per 128x128 block dequantized to f32, chunks
//         aligned to block rows. Simple and exact; the FP8 GEMM proper (cuBLASLt with block
//         scales) comes with the performance work.
// Weights on the host are copied to the device once (CudaBackend::on_device).
#include <cuda_bf16.h>

#include <algorithm>
#include <variant>

#include "engine/backend/cuda/cublas_check.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

// Upper bound of a dequantization scratch buffer: 16 Mi f32 values (64 MiB).
constexpr int64_t kScratchElements = int64_t{1} << 24;

__global__ void to_bf16_kernel(const float* x, int64_t n, __nv_bfloat16* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = __float2bfloat16_rn(x[i]);
}

// out[r, c] (r < rows) = W[r0 + r, c] as f32; for fp8, times scale_inv[(r0 + r) / bo, c / bi].
__global__ void widen_rows_kernel(const void* w, ElementType type, const void* scale,
                                  ElementType scale_type, int64_t scale_cols, int block_out,
                                  int block_in, int64_t r0, int64_t rows, int64_t in, float* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * in;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = r0 + i / in, c = i % in;
    float value = load_f32(w, type, r * in + c);
    if (scale != nullptr)
      value *= load_f32(scale, scale_type, (r / block_out) * scale_cols + c / block_in);
    out[i] = value;
  }
}

__global__ void add_bias_kernel(float* y, const void* bias, ElementType type, int64_t rows,
                                int64_t out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * out;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] += load_f32(bias, type, i % out);
}

// y[:, col0 : col0 + n_out] (row stride ldy) = x[T, in] · w[n_out, in]ᵀ.
void gemm(cublasHandle_t handle, const void* w, cudaDataType w_type, const void* x,
          cudaDataType x_type, int64_t t, int64_t in, int64_t n_out, float* y, int64_t ldy) {
  REFINERY_CHECK(t < (int64_t{1} << 31) && in < (int64_t{1} << 31) && ldy < (int64_t{1} << 31),
                 "linear: dimensions exceed cuBLAS's int range");
  const float alpha = 1.0f, beta = 0.0f;
  REFINERY_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n_out),
                                     static_cast<int>(t), static_cast<int>(in), &alpha, w, w_type,
                                     static_cast<int>(in), x, x_type, static_cast<int>(in), &beta,
                                     y, CUDA_R_32F, static_cast<int>(ldy), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
}

}  // namespace

void CudaBackend::linear(const Tensor& x, const LinearWeight& w, Tensor& y) {
  const LinearSizes sizes = check_linear(Device::kCUDA, x, w, y);
  const int64_t rows = sizes.rows, in = sizes.in, out = sizes.out;
  if (rows == 0 || out == 0) return;
  if (in == 0) {
    fill_zero(y);
  } else if (const auto* dense = std::get_if<DenseWeight>(&w.storage);
             dense != nullptr && dense->weight.dtype() != DType::kF16) {
    const Tensor wd = on_device(dense->weight);
    if (wd.dtype() == DType::kF32) {
      gemm(cublas_, wd.data(), CUDA_R_32F, x.data(), CUDA_R_32F, rows, in, out,
           y.mutable_data<float>(), out);
    } else {
      REFINERY_CHECK(wd.dtype() == DType::kBF16, "linear ", w.name,
                     ": dense weights must be f32, bf16 or f16, found ", wd.describe());
      Tensor xb = empty(DType::kBF16, {rows, in});
      to_bf16_kernel<<<grid_for(rows * in), kThreads, 0, stream_>>>(
          x.data<float>(), rows * in, static_cast<__nv_bfloat16*>(xb.mutable_data()));
      REFINERY_CUDA_AFTER_LAUNCH(*this, "linear (x to bf16)");
      gemm(cublas_, wd.data(), CUDA_R_16BF, xb.data(), CUDA_R_16BF, rows, in, out,
           y.mutable_data<float>(), out);
    }
  } else {
    // Widened path (f16 dense, fp8 block): chunks of weight rows -> f32 scratch -> f32 GEMM.
    Tensor wd, scale;
    int block_out = 1, block_in = 1;
    int64_t scale_cols = 0;
    if (dense != nullptr) {
      wd = on_device(dense->weight);
    } else {
      const auto& fp8 = std::get<Fp8BlockWeight>(w.storage);
      validate_fp8_block(fp8, w.name);
      REFINERY_CHECK(fp8.weight.dtype() == DType::kF8E4M3, "linear ", w.name,
                     ": fp8 weight must be F8_E4M3, found ", fp8.weight.describe());
      wd = on_device(fp8.weight);
      scale = on_device(fp8.scale_inv);
      block_out = fp8.block_out;
      block_in = fp8.block_in;
      scale_cols = (in + block_in - 1) / block_in;
    }
    int64_t chunk = std::max<int64_t>(1, kScratchElements / in);
    chunk = std::max<int64_t>(block_out, chunk / block_out * block_out);  // whole block rows
    chunk = std::min(chunk, out);
    Tensor scratch = empty(DType::kF32, {chunk, in});
    const ElementType wt = element_type(wd.dtype(), "linear weight");
    const ElementType st =
        scale.defined() ? element_type(scale.dtype(), "linear scale_inv") : ElementType::kF32;
    for (int64_t r0 = 0; r0 < out; r0 += chunk) {
      const int64_t n = std::min(chunk, out - r0);
      widen_rows_kernel<<<grid_for(n * in), kThreads, 0, stream_>>>(
          wd.data(), wt, scale.defined() ? scale.data() : nullptr, st, scale_cols, block_out,
          block_in, r0, n, in, scratch.mutable_data<float>());
      REFINERY_CUDA_AFTER_LAUNCH(*this, "linear (widen weight)");
      gemm(cublas_, scratch.data(), CUDA_R_32F, x.data(), CUDA_R_32F, rows, in, n,
           y.mutable_data<float>() + r0, out);
    }
  }
  if (w.bias.defined()) {
    REFINERY_CHECK(w.bias.numel() == out, "linear ", w.name, ": bias must have ", out, " elements");
    const Tensor b = on_device(w.bias);
    add_bias_kernel<<<grid_for(rows * out), kThreads, 0, stream_>>>(
        y.mutable_data<float>(), b.data(), element_type(b.dtype(), "linear bias"), rows, out);
    REFINERY_CUDA_AFTER_LAUNCH(*this, "linear (bias)");
  }
}

}  // namespace refinery::backend::cuda
