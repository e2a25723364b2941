#pragma once
// AutoAWQ W4/W3/W8 linear layers on the GPU (issue 6). Plain C++: no CUDA headers, so g++-compiled
// code (the benchmark, the CPU tests of the tiled layout) can use it; the kernels live in
// awq_linear.cu and awq_gemv.cu (their *_nocuda.cpp twins without CUDA).
//
// The weight format is backend::AwqWeight (linear_weight.hpp), W[r, c] for output r, input c:
//   code = element (r % pack) of qweight[c, r / pack] in the packing order of `bits`,
//   zero = the same element of qzeros[c / g, r / pack],  W = (code - zero) * scales[c / g, r].
// On the device a matrix is kept in one of two layouts (AwqDeviceMatrix::layout), one copy:
//   AutoAWQ: the file's tensors as they are (8-bit weights, groups that are not a power-of-two
//     multiple of 64, outputs not a multiple of 16).
//   tiled (3/4-bit, group 64·2^i, out % 16 == 0; what awq_device_matrix makes by default): the
//     same bytes rearranged at upload so that the decode GEMV reads whole output rows with
//     coalesced 16-byte loads and feeds the codes to bf16 tensor-core MMAs (layout below).
// Kernels:
//   GEMV (decode, 1..kAwqGemvMaxRows token rows): tiled layout, awq_gemv.cu's header comment;
//     AutoAWQ layout, a split-K kernel over thread-block clusters (awq_linear.cu, variants in
//     awq_gemv.cu).
//   dequantize (either layout): W rows as bf16 [rows, in] row-major (what CudaBackend::gemm_bf16
//     multiplies), for prefill (dequantize a chunk of rows, then a cuBLASLt GEMM) and the MoE stack.
//
// Tiled layout (T = out / 16 output tiles, C = in / 64 chunks, G = in / group_size groups):
//   qweight int32 [T, C, 32 lanes, 4 words]: the 512 bytes of tile t, chunk c hold the 16 x 64
//     codes W[16t .. 16t+16, 64c .. 64c+64), lane l = 4·g + q (g = l / 4, q = l % 4) holding
//     outputs 16t + g and 16t + g + 8 at inputs 64c + 16q .. +16: word s its inputs
//     64c + 16q + 4s + j (j = 0..3), nibble awq_tiled_nibble(j, h) the code of output
//     16t + g + 8h. These are the A fragments of 4 mma.m16n8k16 (rows = outputs, k = inputs in a
//     permuted order): nibbles (i, i + 4) of a word are the bf16 pair of A register i.
//   zeros uint8 [T, G, 8] (in qzeros' bytes): byte g = zero(16t + g) | zero(16t + g + 8) << 4.
//   scales f16 [T, G, 8, 2] (in scales' bytes): (scale(16t + g), scale(16t + g + 8)).
// awq_tiled_* below are that map, shared by the repack kernels (awq_linear.cu), the host repack
// (tests) and the documentation of the GEMV.
#include <cstdint>
#include <string>
#include <vector>

#include "engine/backend/linear_weight.hpp"
#include "engine/core/tensor.hpp"

namespace refinery::backend::cuda {

class CudaBackend;

// Token rows up to which linear() runs the GEMV (more rows: dequantize + GEMM).
constexpr int64_t kAwqGemvMaxRows = 8;

#if defined(__CUDACC__)
#define REFINERY_AWQ_HD __host__ __device__
#else
#define REFINERY_AWQ_HD
#endif

enum class AwqLayout { kAutoAwq, kTiled };

// An AwqWeight's tensors on the device (raw pointers; the caller keeps the tensors alive).
struct AwqDeviceMatrix {
  const int32_t* qweight = nullptr;  // AutoAWQ [in, words]; tiled [out / 16, in / 64, 32, 4]
  const int32_t* qzeros = nullptr;   // AutoAWQ [in / group_size, words]; tiled bytes [out / 16, groups, 8]
  const void* scales = nullptr;      // f16; AutoAWQ [in / group_size, out]; tiled [out / 16, groups, 8, 2]
  int bits = 4;                      // 3, 4 or 8
  int group_size = 128;
  int64_t out = 0, in = 0;
  int64_t words = 0;  // int32 columns of AutoAWQ's qweight: out / pack
  AwqLayout layout = AwqLayout::kAutoAwq;
  // The tiled copy was written by a kernel this call enqueued (awq_device_matrix's repack): the
  // GEMV then launches without programmatic dependent launch (it reads weights before waiting).
  bool fresh = false;
};

// ---- the tiled layout (see the top of this file) ----

// Whether a matrix can take the tiled layout: 3/4-bit, group_size 64·2^i dividing in, out % 16 == 0.
inline bool awq_tiled_supported(int bits, int64_t group_size, int64_t out, int64_t in) {
  const bool pow2_chunks =
      group_size >= 64 && group_size % 64 == 0 && ((group_size / 64) & (group_size / 64 - 1)) == 0;
  return (bits == 3 || bits == 4) && pow2_chunks && in > 0 && in % group_size == 0 && out > 0 &&
         out % 16 == 0;
}
// Nibble of a tiled word holding input j (0..3) of its 4 for output row g + 8h (h = 0, 1) of the
// lane: nibbles (0, 4) are A register 0 = (row g, inputs 0, 1), (1, 5) register 1 = row g + 8,
// (2, 6) register 2 = (row g, inputs 2, 3), (3, 7) register 3 = row g + 8.
REFINERY_AWQ_HD constexpr int awq_tiled_nibble(int j, int h) { return (j % 2) * 4 + (j / 2) * 2 + h; }
// The inverse: input j and row half h of nibble n.
REFINERY_AWQ_HD constexpr int awq_tiled_input_of(int n) { return ((n >> 1) & 1) * 2 + (n >> 2); }
REFINERY_AWQ_HD constexpr int awq_tiled_half_of(int n) { return n & 1; }
// Nibble of output o % 8 inside an AutoAWQ 4-bit word (order [0,2,4,6,1,3,5,7]).
REFINERY_AWQ_HD constexpr int awq_autoawq_nibble(int o) { return o % 2 == 0 ? o / 2 : o / 2 + 4; }
// int32 index and nibble of the code of W[o, k] in the tiled qweight of a matrix with `in` inputs.
struct AwqTiledPosition {
  int64_t word;
  int nibble;
};
REFINERY_AWQ_HD constexpr AwqTiledPosition awq_tiled_position(int64_t o, int64_t k, int64_t in) {
  const int64_t tile = o / 16, chunk = k / 64;
  const int r = static_cast<int>(o % 16), kk = static_cast<int>(k % 64);
  const int lane = 4 * (r % 8) + kk / 16, s = (kk % 16) / 4;
  return {((tile * (in / 64) + chunk) * 32 + lane) * 4 + s, awq_tiled_nibble(kk % 4, r / 8)};
}
// Index of the byte (zeros: nibble h) and of the f16 (scales) of output o in group `group`.
REFINERY_AWQ_HD constexpr int64_t awq_tiled_meta(int64_t o, int64_t group, int64_t groups) {
  return ((o / 16) * groups + group) * 8 + o % 8;
}
REFINERY_AWQ_HD constexpr int64_t awq_tiled_scale(int64_t o, int64_t group, int64_t groups) {
  return awq_tiled_meta(o, group, groups) * 2 + (o % 16) / 8;
}

// The tiled layout of AutoAWQ tensors on the host (the reference the GPU repack is tested against;
// the engine repacks on the device): qweight int32 [in, out / 8], qzeros int32 [groups, out / 8],
// scales f16 bits [groups, out] -> tiled qweight (in · out / 8 int32), zeros (groups · out / 2
// bytes), scales (groups · out f16 bits). Requires awq_tiled_supported.
inline void awq_tile_host(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales,
                          int64_t out, int64_t in, int64_t group_size, int32_t* tiled_qweight,
                          uint8_t* tiled_zeros, uint16_t* tiled_scales) {
  const int64_t words = out / 8, groups = in / group_size;
  auto code = [&](const int32_t* t, int64_t row, int64_t o) {
    return (static_cast<uint32_t>(t[row * words + o / 8]) >> (4 * awq_autoawq_nibble(o % 8))) & 15u;
  };
  for (int64_t i = 0; i < in * words; ++i) tiled_qweight[i] = 0;
  for (int64_t k = 0; k < in; ++k)
    for (int64_t o = 0; o < out; ++o) {
      const AwqTiledPosition p = awq_tiled_position(o, k, in);
      tiled_qweight[p.word] = static_cast<int32_t>(static_cast<uint32_t>(tiled_qweight[p.word]) |
                                                   code(qweight, k, o) << (4 * p.nibble));
    }
  for (int64_t i = 0; i < groups * out / 2; ++i) tiled_zeros[i] = 0;
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t o = 0; o < out; ++o) {
      const int64_t b = awq_tiled_meta(o, g, groups);
      tiled_zeros[b] = static_cast<uint8_t>(tiled_zeros[b] | code(qzeros, g, o) << (4 * ((o % 16) / 8)));
      tiled_scales[awq_tiled_scale(o, g, groups)] = scales[g * out + o];
    }
}

// Whether the GEMV handles this matrix with `rows` token rows: 1..kAwqGemvMaxRows; tiled layout: a
// device with bf16 tensor cores (compute capability 8+); AutoAWQ layout: any group size dividing
// `in`, on a device with thread-block clusters (compute capability 9+); and a build that compiled
// the kernel for it. Always false in a build without CUDA.
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

// ---- GEMV variants (awq_gemv.cu; awq_bench gemv and gemv-sweep time them) ----
// Variant 0 is the AutoAWQ-layout kernel described in awq_linear.cu; the others are listed with
// what they change by awq_gemv_variant_description. Every variant computes the same y within the
// GEMV's error bound (f32 accumulation, exact dequantization) and is deterministic.
// AutoAWQ variants run on AutoAWQ-layout matrices (one that does not cover a matrix, e.g. 8-bit,
// runs variant 0 for it); tiled variants on tiled matrices. A matrix of the other layout than the
// variant's runs the default of its own layout (tiled: kAwqGemvDefaultVariant; AutoAWQ:
// kAwqGemvAutoAwqVariant).
// The variant awq_gemv_bf16 (and so linear()) runs: change this constant to switch the default.
constexpr int kAwqGemvDefaultVariant = 2;  // tiled (awq_gemv.cu)
// The AutoAWQ-layout variant for matrices the tiled layout does not cover.
constexpr int kAwqGemvAutoAwqVariant = 1;  // v4r32c16: fastest AutoAWQ variant (H100 sweep)
int awq_gemv_variant_count();
std::string awq_gemv_variant_name(int variant);  // what REFINERY_AWQ_GEMV accepts (or the index)
std::string awq_gemv_variant_description(int variant);
bool awq_gemv_variant_is_tiled(int variant);
// kAwqGemvDefaultVariant, or the variant named by the environment variable REFINERY_AWQ_GEMV
// (read once; a name or an index; an unknown one is a user error).
int awq_gemv_active_variant();
// What `variant` runs for this matrix and row count on the current device: "base",
// "base (fallback)" or the kernel configuration and plan of its own kernel.
std::string awq_gemv_variant_runs(const AwqDeviceMatrix& w, int64_t rows, int variant);
// awq_gemv_bf16 with an explicit variant (no workspace: none needs one).
void awq_gemv_bf16_variant(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                           bool y_f32, int variant, void* stream);

// The layout awq_device_matrix gives a matrix: tiled when awq_tiled_supported and the active GEMV
// variant is a tiled one (REFINERY_AWQ_GEMV naming an AutoAWQ variant keeps the file's layout).
AwqLayout awq_device_layout(int bits, int64_t group_size, int64_t out, int64_t in);
// Writes the tiled layout of `src` (AutoAWQ layout on the device, awq_tiled_supported) into device
// buffers of the same sizes as src's tensors (qweight in · out / 8 int32, zeros groups · out / 2
// bytes, scales groups · out f16), which must not overlap src's. Enqueued on `stream`.
void awq_repack_tiled(const AwqDeviceMatrix& src, int32_t* qweight, void* zeros, void* scales,
                      void* stream);

// out[(k - word_begin) * pack + j, c] = bf16(W[k * pack + j, c]) for the qweight columns
// k in [word_begin, word_begin + word_count): output rows [word_begin * pack, ...) of W as a
// row-major bf16 [word_count * pack, in] matrix at `out` (device), from either layout. Enqueued on
// `stream`.
void awq_dequantize_bf16(const AwqDeviceMatrix& w, int64_t word_begin, int64_t word_count,
                         void* out, void* stream);

// ---- backend glue (CudaBackend's public helpers; awq_linear.cu) ----

// Checks `w` (user errors naming the layer `name`: bits, group size, tensor dtypes and shapes),
// brings its tensors to the device (CudaBackend::on_device, appended to `keep`, which must outlive
// the enqueue of the kernels) and returns their pointers, in the layout awq_device_layout names.
// Tiled: the backend's cached copy of a read-only host tensor is rewritten in place once (one
// copy on the device); the fresh copy of a writable host tensor is rewritten in place per call;
// tensors the caller already has on the device are left alone and repacked into new device
// tensors per call (a full extra pass: keep decode weights on the host, memory-mapped).
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
