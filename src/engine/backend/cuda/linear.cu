// linear on the GPU: y[T, out] = x[T, in] · Wᵀ (+ b), f32 accumulation. x and y are activations
// (f32 or bf16, independently: the router and the LM head write f32 from bf16 inputs).
//
// Precision and data flow per weight format:
//   bf16  W used in place; x rounded to bf16 when it is f32 (relative error <= 2^-9 per element,
//         like a bf16 inference engine); one cuBLASLt GEMM (gemm.cu), bf16 x bf16 summed in f32.
//   fp8   W stays FP8 in device memory (a teacher takes its FP8 size); each call dequantizes
//         chunks of weight rows (E4M3 x scale_inv per 128x128 block, rounded to bf16) into a
//         scratch of at most kScratchElements and runs the bf16 GEMM per chunk, chunks aligned to
//         block rows.
//   f32   plain f32 GEMM (cublasGemmEx, CUBLAS_COMPUTE_32F, no TF32) with W in place; x widened
//         to f32 when bf16. Agrees with the CPU to f32 rounding (the op tests rely on it).
//   f16   x could overflow f16 (|x| > 65504), so W is widened to f32 in chunks of rows and each
//         chunk runs the f32 GEMM.
//   awq   W stays packed on the device; up to kAwqGemvMaxRows token rows run the GEMV (exact
//         dequantized W, f32 accumulation), more rows dequantize chunks of W rows to bf16 and run
//         the bf16 GEMM per chunk (awq_linear.cu).
// Weights on the host are copied to the device once (CudaBackend::on_device).
#include <cuda_bf16.h>

#include <algorithm>
#include <variant>

#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/backend/cuda/cublas_check.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

// Upper bound of a dequantization scratch buffer: 16 Mi values.
constexpr int64_t kScratchElements = int64_t{1} << 24;

template <typename Src, typename Dst>
__global__ void convert_kernel(const Src* x, int64_t n, Dst* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = from_f32<Dst>(to_f32(x[i]));
}

// out[r, c] (r < rows) = W[r0 + r, c] (as f32, then rounded to Dst); for fp8, times
// scale_inv[(r0 + r) / bo, c / bi].
template <typename Dst>
__global__ void widen_rows_kernel(const void* w, ElementType type, const void* scale,
                                  ElementType scale_type, int64_t scale_cols, int block_out,
                                  int block_in, int64_t r0, int64_t rows, int64_t in, Dst* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * in;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = r0 + i / in, c = i % in;
    float value = load_f32(w, type, r * in + c);
    if (scale != nullptr)
      value *= load_f32(scale, scale_type, (r / block_out) * scale_cols + c / block_in);
    out[i] = from_f32<Dst>(value);
  }
}

template <typename T>
__global__ void add_bias_kernel(T* y, const void* bias, ElementType type, int64_t rows,
                                int64_t out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * out;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = from_f32<T>(to_f32(y[i]) + load_f32(bias, type, i % out));
}

// y[:, col0 : col0 + n_out] (row stride ldy) = x[T, in] · w[n_out, in]ᵀ, all f32.
void gemm_f32(cublasHandle_t handle, const float* w, const float* x, int64_t t, int64_t in,
              int64_t n_out, float* y, int64_t ldy) {
  REFINERY_CHECK(t < (int64_t{1} << 31) && in < (int64_t{1} << 31) && ldy < (int64_t{1} << 31),
                 "linear: dimensions exceed cuBLAS's int range");
  const float alpha = 1.0f, beta = 0.0f;
  REFINERY_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n_out),
                                     static_cast<int>(t), static_cast<int>(in), &alpha, w,
                                     CUDA_R_32F, static_cast<int>(in), x, CUDA_R_32F,
                                     static_cast<int>(in), &beta, y, CUDA_R_32F,
                                     static_cast<int>(ldy), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT));
}

// Rows per dequantization chunk: whole FP8 block rows, at most kScratchElements values.
int64_t chunk_rows(int64_t in, int64_t out, int block_out) {
  int64_t chunk = std::max<int64_t>(1, kScratchElements / std::max<int64_t>(in, 1));
  chunk = std::max<int64_t>(block_out, chunk / block_out * block_out);
  return std::min(chunk, out);
}

}  // namespace

Tensor CudaBackend::as_dtype(const Tensor& x, DType dtype, const char* op) {
  if (x.dtype() == dtype) return x;
  CudaBackend& be = *this;
  Tensor y = be.empty(dtype, x.shape());
  const int64_t n = x.numel();
  if (n == 0) return y;
  dispatch_activation(x.dtype(), op, [&](auto src_tag) {
    using Src = decltype(src_tag);
    dispatch_activation(dtype, op, [&](auto dst_tag) {
      using Dst = decltype(dst_tag);
      convert_kernel<Src, Dst><<<grid_for(n), kThreads, 0, be.stream()>>>(
          static_cast<const Src*>(x.data()), n, static_cast<Dst*>(y.mutable_data()));
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(be, op);
  return y;
}

const void* CudaBackend::bf16_weight_rows(const LinearWeight& w, int64_t r0, int64_t rows,
                                          Tensor& scratch) {
  const int64_t in = w.in_features();
  Tensor wd, scale;
  int block_out = 1, block_in = 1;
  int64_t scale_cols = 0;
  if (const auto* dense = std::get_if<DenseWeight>(&w.storage)) {
    wd = on_device(dense->weight);
    if (wd.dtype() == DType::kBF16) {
      scratch = wd;  // keeps a per-call copy of a writable host weight alive for the caller
      return static_cast<const __nv_bfloat16*>(wd.data()) + r0 * in;
    }
  } else if (const auto* awq = std::get_if<AwqWeight>(&w.storage)) {
    // Whole packed int32 columns only (the LM head's vocabulary chunks are multiples of 8).
    std::vector<Tensor> keep;
    const AwqDeviceMatrix m = awq_device_matrix(*this, *awq, w.name, keep);
    const int pack = awq_pack_factor(m.bits);
    REFINERY_CHECK(r0 % pack == 0 && rows % pack == 0, "linear ", w.name, ": AWQ weight rows [",
                   r0, ", +", rows, ") do not start and end on a multiple of ", pack);
    if (!scratch.defined() || scratch.dtype() != DType::kBF16 || scratch.numel() < rows * in ||
        scratch.is_read_only())
      scratch = empty(DType::kBF16, {rows * in});
    awq_dequantize_bf16(m, r0 / pack, rows / pack, scratch.mutable_data(), stream_);
    sync_if_debugging("linear (awq weight to bf16)");
    return scratch.data();
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
  if (!scratch.defined() || scratch.dtype() != DType::kBF16 || scratch.numel() < rows * in ||
      scratch.is_read_only())
    scratch = empty(DType::kBF16, {rows * in});
  const ElementType st =
      scale.defined() ? element_type(scale.dtype(), "linear scale_inv") : ElementType::kF32;
  widen_rows_kernel<__nv_bfloat16><<<grid_for(rows * in), kThreads, 0, stream_>>>(
      wd.data(), element_type(wd.dtype(), "linear weight"),
      scale.defined() ? scale.data() : nullptr, st, scale_cols, block_out, block_in, r0, rows, in,
      static_cast<__nv_bfloat16*>(scratch.mutable_data()));
  REFINERY_CUDA_AFTER_LAUNCH(*this, "linear (weight to bf16)");
  return scratch.data();
}

void CudaBackend::linear(const Tensor& x, const LinearWeight& w, Tensor& y) {
  // Timed per projection kind: "linear q_proj", "linear lm_head", ...
  OpTimer timer(profiler_, stream_,
                profiler_.enabled() ? "linear " + w.name.substr(w.name.rfind('.') + 1) : "");
  const LinearSizes sizes = check_linear(Device::kCUDA, x, w, y);
  const int64_t rows = sizes.rows, in = sizes.in, out = sizes.out;
  if (rows == 0 || out == 0) return;
  const auto* dense = std::get_if<DenseWeight>(&w.storage);
  const auto* awq = std::get_if<AwqWeight>(&w.storage);
  const DType wdtype = dense != nullptr ? dense->weight.dtype() : DType::kF8E4M3;
  if (in == 0) {
    fill_zero(y);
  } else if (awq != nullptr) {
    awq_linear(*this, x, *awq, w.name, y);
  } else if (wdtype == DType::kF32 || wdtype == DType::kF16) {
    // The f32 path (tests, f32/f16 checkpoints).
    const Tensor x32 = as_dtype(x, DType::kF32, "linear (x to f32)");
    Tensor y32 = y.dtype() == DType::kF32 ? y : empty(DType::kF32, {rows, out});
    const Tensor wd = on_device(dense->weight);
    if (wdtype == DType::kF32) {
      gemm_f32(cublas_, wd.data<float>(), x32.data<float>(), rows, in, out,
               y32.mutable_data<float>(), out);
    } else {
      const int64_t chunk = chunk_rows(in, out, 1);
      Tensor scratch = empty(DType::kF32, {chunk, in});
      for (int64_t r0 = 0; r0 < out; r0 += chunk) {
        const int64_t n = std::min(chunk, out - r0);
        widen_rows_kernel<float><<<grid_for(n * in), kThreads, 0, stream_>>>(
            wd.data(), ElementType::kF16, nullptr, ElementType::kF32, 0, 1, 1, r0, n, in,
            scratch.mutable_data<float>());
        REFINERY_CUDA_AFTER_LAUNCH(*this, "linear (widen f16 weight)");
        gemm_f32(cublas_, scratch.data<float>(), x32.data<float>(), rows, in, n,
                 y32.mutable_data<float>() + r0, out);
      }
    }
    if (y.dtype() != DType::kF32) y.copy_from(as_dtype(y32, y.dtype(), "linear (y)"));
  } else {
    const Tensor xb = as_dtype(x, DType::kBF16, "linear (x to bf16)");
    const cudaDataType y_type = y.dtype() == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
    const std::size_t y_element = y.dtype() == DType::kF32 ? 4 : 2;
    if (wdtype == DType::kBF16) {
      Tensor keep;
      gemm_bf16(bf16_weight_rows(w, 0, out, keep), xb.data(), rows, in, out, y.mutable_data(),
                y_type, out);
    } else {
      const int block_out = std::get<Fp8BlockWeight>(w.storage).block_out;
      const int64_t chunk = chunk_rows(in, out, block_out);
      Tensor scratch;
      for (int64_t r0 = 0; r0 < out; r0 += chunk) {
        const int64_t n = std::min(chunk, out - r0);
        const void* wb = bf16_weight_rows(w, r0, n, scratch);
        gemm_bf16(wb, xb.data(), rows, in, n,
                  static_cast<std::byte*>(y.mutable_data()) + r0 * y_element, y_type, out);
      }
    }
  }
  if (w.bias.defined()) {
    REFINERY_CHECK(w.bias.numel() == out, "linear ", w.name, ": bias must have ", out, " elements");
    const Tensor b = on_device(w.bias);
    dispatch_activation(y.dtype(), "linear (bias)", [&](auto tag) {
      using T = decltype(tag);
      add_bias_kernel<T><<<grid_for(rows * out), kThreads, 0, stream_>>>(
          static_cast<T*>(y.mutable_data()), b.data(), element_type(b.dtype(), "linear bias"),
          rows, out);
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "linear (bias)");
  }
}

}  // namespace refinery::backend::cuda
