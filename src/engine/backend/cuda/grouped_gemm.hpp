#pragma once
// Grouped GEMM for the MoE experts: every expert (group) multiplies its own contiguous block of
// token rows by its own weight matrix, all groups in one kernel launch, on bf16 tensor cores with
// f32 accumulation. Plain C++: no CUDA headers, so g++-compiled code and tests can call it; the
// kernel lives in grouped_gemm.cu (grouped_gemm_nocuda.cpp without CUDA).
#include <cstdint>

namespace refinery::backend::cuda {

// For every group g with rows [offsets[g], offsets[g+1]):
//   y[r, :] = x[r, :] · W_gᵀ   i.e. y[r, j] = Σ_i x[r, i] · w[g, j, i]
// All tensors are contiguous, row-major, on the current CUDA device, 16-byte aligned:
//   x bf16 [rows_total, k], w bf16 [groups, n, k] (W_g at w + g·n·k), y [rows_total, n] bf16 (round
//   to nearest even) or f32 (y_f32). `offsets` lives on the DEVICE (the host never needs the
//   per-group counts, so no synchronization): int32 [groups + 1], non-decreasing, offsets[0] = 0,
//   offsets[groups] = rows_total. Empty groups are fine. Rows outside every group are not written.
// With x_rows (device int32 [rows_total]), row r reads x[x_rows[r], :] instead of x[r, :]: the MoE
// permutation fused into the operand load (x then has any number of rows; every index must be a
// row of it).
struct GroupedGemmArgs {
  const void* x;           // bf16 [rows_total, k] (or indexed by x_rows)
  const void* w;           // bf16 [groups, n, k]
  void* y;                 // [rows_total, n], bf16 or f32 (y_f32)
  const int32_t* offsets;  // device int32 [groups + 1]
  int64_t groups, rows_total, n, k;
  bool y_f32;
  const int32_t* x_rows = nullptr;
  // SwiGLU fused into the epilogue (the MoE gate|up projection): w holds [groups, 2n, k], expert
  // g's n gate rows then its n up rows, and y bf16 [rows_total, n] gets
  //   y[r, j] = silu(x[r]·W_g[j]) · (x[r]·W_g[n + j])   from the f32 accumulators.
  // Only the wgmma kernel has it (grouped_gemm_wgmma_available()); n a multiple of 8.
  bool swiglu = false;
};

// Which kernel runs the call: kAuto picks wgmma on compute 9.0 GPUs (H100/H200) unless
// REFINERY_GGEMM_KERNEL=mma, else mma.sync; the others force one (kWgmma throws where
// grouped_gemm_wgmma_available() is false). Both give the same results up to f32 summation order.
enum class GroupedGemmKernel { kAuto, kMmaSync, kWgmma };

// Whether the current device runs the wgmma kernel (a compute 9.0 GPU; false without CUDA).
bool grouped_gemm_wgmma_available();
// Whether a kAuto call may ask for the fused SwiGLU (GroupedGemmArgs::swiglu): wgmma available and
// not forced off by REFINERY_GGEMM_KERNEL=mma.
bool grouped_gemm_fused_swiglu_available();

// Whether the kernel handles these sizes: n > 0 and k > 0 multiples of 8 (rows of x and w are
// copied in 16-byte pieces). Always false in a build without CUDA.
bool grouped_gemm_supports(int64_t n, int64_t k);

// Enqueues the kernel on `stream` (a cudaStream_t; nullptr is the default stream); no host
// synchronization. Throws an internal error for unsupported sizes, misaligned pointers, sizes past
// the kernel's limits or a failed launch.
void grouped_gemm_bf16(const GroupedGemmArgs& args, void* stream,
                       GroupedGemmKernel kernel = GroupedGemmKernel::kAuto);

}  // namespace refinery::backend::cuda
