#pragma once
// Shared by the grouped GEMM kernels (grouped_gemm.cu: mma.sync for any GPU; grouped_gemm_sm90a.cu:
// Hopper wgmma): the kernel parameters and the mapping of a block's row-tile index to (group, first
// row, valid rows) read from the device offsets, so the host never needs the per-group counts.
//
// Scheduling: the grid's y extent is an upper bound of the row tiles,
//   Σ_g ceil(rows_g / BM) <= Σ_g (rows_g / BM + 1) <= ceil(rows_total / BM) + groups.
// Block row-tile `m_tile` is the m_tile-th tile in the order (group 0's tiles, group 1's tiles, ...):
// warp 0 scans the offsets 32 groups at a time (prefix sum of tile counts by shuffles) and finds the
// group; blocks past the last real tile get group -1 and exit at once.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace refinery::backend::cuda::grouped_gemm_detail {

struct Params {
  const __nv_bfloat16* x;  // [rows_total, k], or rows picked by x_rows
  const __nv_bfloat16* w;  // [groups, n, k]
  void* y;                 // [rows_total, n], bf16 or f32
  const int32_t* offsets;  // device [groups + 1]
  int groups, rows_total, n, k;
  const int32_t* x_rows;   // device [rows_total] or nullptr: row r of the problem is x[x_rows[r]]
  bool swiglu;             // y = SwiGLU of the gate|up product (grouped_gemm.hpp); wgmma only
};

// Where row `row` (of a tile starting at problem row row0) of the A operand starts.
__device__ __forceinline__ const __nv_bfloat16* a_row(const Params& p, int row0, int row) {
  const int64_t r = p.x_rows != nullptr ? int64_t{p.x_rows[row0 + row]} : int64_t{row0} + row;
  return p.x + r * p.k;
}

struct MTile {
  int group;  // -1: past the last real tile
  int row0;   // first row of the tile
  int rows;   // valid rows (<= BM)
};

// Called by all 32 lanes of one warp; every lane gets the result. Offsets are clamped so malformed
// values can never make a kernel read or write outside x or y.
template <int BM>
__device__ __forceinline__ MTile find_m_tile(const Params& p, int m_tile, int lane) {
  int tiles_before = 0;  // m tiles of the groups before this chunk of 32
  for (int g0 = 0; g0 < p.groups; g0 += 32) {
    const int gi = g0 + lane;
    int start = 0, end = 0;
    if (gi < p.groups) {
      start = min(max(p.offsets[gi], 0), p.rows_total);
      end = min(max(p.offsets[gi + 1], start), p.rows_total);
    }
    const int count = (end - start + BM - 1) / BM;  // this group's m tiles
    int inclusive = count;                          // prefix over lanes (Hillis-Steele)
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int t = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += t;
    }
    const int first = tiles_before + inclusive - count;  // this group's first tile index
    const bool mine = m_tile >= first && m_tile < first + count;
    const unsigned ballot = __ballot_sync(0xffffffffu, mine);
    if (ballot != 0u) {  // warp-uniform
      const int src = __ffs(static_cast<int>(ballot)) - 1;
      const int row0 = start + (m_tile - first) * BM;
      return {__shfl_sync(0xffffffffu, gi, src), __shfl_sync(0xffffffffu, row0, src),
              __shfl_sync(0xffffffffu, min(BM, end - row0), src)};
    }
    tiles_before += __shfl_sync(0xffffffffu, inclusive, 31);
  }
  return {-1, 0, 0};
}

// Stores the pair (cols col, col+1) of one output row: f32 as one 8-byte store, bf16 rounded to
// nearest even as one 4-byte store (col is even and n is a multiple of 8, so both are aligned).
__device__ __forceinline__ void store_pair(float* row, int col, float lo, float hi) {
  *reinterpret_cast<float2*>(row + col) = make_float2(lo, hi);
}
__device__ __forceinline__ void store_pair(__nv_bfloat16* row, int col, float lo, float hi) {
  *reinterpret_cast<__nv_bfloat162*>(row + col) = __floats2bfloat162_rn(lo, hi);
}

// The Hopper kernel (grouped_gemm_sm90a.cu): whether the current device can run it (compute 9.0),
// and its launcher (throws on other devices).
bool wgmma_available();
void launch_wgmma(const Params& params, bool y_f32, int64_t rows_total, int64_t groups,
                  cudaStream_t stream);

}  // namespace refinery::backend::cuda::grouped_gemm_detail
