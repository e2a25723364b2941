#pragma once
// AutoAWQ W4/W3/W8 linear layers on the GPU (issue 6). Plain C++: no CUDA headers, so g++-compiled
// code (the benchmark) can call the raw kernels; the kernels live in awq_linear.cu
// (awq_linear_nocuda.cpp without CUDA).
//
// The weight format is backend::AwqWeight (linear_weight.hpp), W[r, c] for output r, input c:
//   code = element (r % pack) of qweight[c, r / pack] in the packing order of `bits`,
//   zero = the same element of qzeros[c / g, r / pack],  W = (code - zero) * scales[c / g, r].
// Two kernels:
//   GEMV (decode, 1..kAwqGemvMaxRows token rows): streams qweight once, dequantizes in registers,
//     f32 accumulation; K split over the blocks of a thread-block cluster (sm_90) whose partial
//     sums are reduced through distributed shared memory in a fixed order (one kernel,
//     deterministic). Several variants of it can be chosen at run time (below).
//   dequantize: W rows as bf16 [rows, in] row-major (what CudaBackend::gemm_bf16 multiplies), for
//     prefill (dequantize a chunk of rows, then a cuBLASLt GEMM) and the MoE expert stack.
#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend/linear_weight.hpp"
#include "engine/core/tensor.hpp"

namespace refinery::backend::cuda {

class CudaBackend;

// Token rows up to which linear() runs the GEMV (more rows: dequantize + GEMM).
constexpr int64_t kAwqGemvMaxRows = 8;

// An AwqWeight's tensors on the device (raw pointers; the caller keeps the tensors alive).
struct AwqDeviceMatrix {
  const int32_t* qweight = nullptr;  // [in, words]
  const int32_t* qzeros = nullptr;   // [in / group_size, words]
  const void* scales = nullptr;      // f16 [in / group_size, out]
  int bits = 4;                      // 3, 4 or 8
  int group_size = 128;
  int64_t out = 0, in = 0;
  int64_t words = 0;  // int32 columns of qweight: out / pack
};

// Whether the GEMV handles this matrix with `rows` token rows: 1..kAwqGemvMaxRows, any group size
// dividing `in`, on a device with thread-block clusters (compute capability 9+) and a build that
// compiled the kernel for it. Always false in a build without CUDA.
bool awq_gemv_supports(const AwqDeviceMatrix& w, int64_t rows);
// f32 elements of the workspace awq_gemv_bf16 needs on the current device: 0 (the split-K sums
// stay in the kernel); kept so callers need not change if a design needs one again.
int64_t awq_gemv_workspace_floats(const AwqDeviceMatrix& w, int64_t rows);
// y[rows, out] = x[rows, in] · Wᵀ; x bf16, y bf16 (rounded once) or f32 (y_f32), both contiguous
// on the current device; f32 accumulation. `workspace` holds awq_gemv_workspace_floats f32
// elements (may be null when that is 0; currently unused). Enqueued on `stream` (a cudaStream_t); throws an internal
// error for unsupported sizes, a short workspace or a failed launch.
void awq_gemv_bf16(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y, bool y_f32,
                   float* workspace, int64_t workspace_floats, void* stream);

// ---- GEMV variants (awq_gemv.cu; awq_bench gemv-sweep times them all) ----
// Variant 0 is the kernel described in awq_linear.cu; the others are listed with what they change
// by awq_gemv_variant_description. Every variant computes the same y within the GEMV's error
// bound (f32 accumulation, exact dequantization) and is deterministic; one that does not cover a
// matrix (8-bit, group sizes not a multiple of 16, ...) runs variant 0 for it.
// The variant awq_gemv_bf16 (and so linear()) runs: change this constant to switch the default.
constexpr int kAwqGemvDefaultVariant = 12;  // v4r32c16: fastest over the 7B decode shapes (H100 sweep, docs/BENCHMARKS.md)
int awq_gemv_variant_count();
std::string awq_gemv_variant_name(int variant);  // what REFINERY_AWQ_GEMV accepts (or the index)
std::string awq_gemv_variant_description(int variant);
// kAwqGemvDefaultVariant, or the variant named by the environment variable REFINERY_AWQ_GEMV
// (read once; a name or an index; an unknown one is a user error).
int awq_gemv_active_variant();
// What `variant` runs for this matrix and row count on the current device: "base",
// "base (fallback)" or the kernel configuration and plan of its own kernel.
std::string awq_gemv_variant_runs(const AwqDeviceMatrix& w, int64_t rows, int variant);
// awq_gemv_bf16 with an explicit variant (no workspace: none needs one).
void awq_gemv_bf16_variant(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                           bool y_f32, int variant, void* stream);

// out[(k - word_begin) * pack + j, c] = bf16(W[k * pack + j, c]) for the qweight columns
// k in [word_begin, word_begin + word_count): output rows [word_begin * pack, ...) of W as a
// row-major bf16 [word_count * pack, in] matrix at `out` (device). Enqueued on `stream`.
void awq_dequantize_bf16(const AwqDeviceMatrix& w, int64_t word_begin, int64_t word_count,
                         void* out, void* stream);

// ---- backend glue (CudaBackend's public helpers; awq_linear.cu) ----

// Checks `w` (user errors naming the layer `name`: bits, group size, tensor dtypes and shapes),
// brings its tensors to the device (CudaBackend::on_device, appended to `keep`, which must outlive
// the enqueue of the kernels) and returns their pointers.
AwqDeviceMatrix awq_device_matrix(CudaBackend& be, const AwqWeight& w, const std::string& name,
                                  std::vector<Tensor>& keep);
// y[T, out] = x[T, in] · Wᵀ without bias (the caller adds it); x, y activations (f32 or bf16) on
// the device. T <= kAwqGemvMaxRows: the GEMV; otherwise rows of W are dequantized to bf16 in
// chunks and multiplied with cuBLASLt (x rounded to bf16 first, like the fp8 path).
void awq_linear(CudaBackend& be, const Tensor& x, const AwqWeight& w, const std::string& name,
                Tensor& y);
// The whole of W as bf16 [out, in] row-major at the device pointer `out` (the MoE expert stack).
void awq_dequantize_weight(CudaBackend& be, const AwqWeight& w, const std::string& name, void* out);

}  // namespace refinery::backend::cuda
