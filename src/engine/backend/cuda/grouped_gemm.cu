// Grouped GEMM for the MoE experts: y[rows of g] = x[rows of g] · W_gᵀ for every group g in one
// launch (bf16 in, f32 accumulation, mma.sync m16n8k16 tensor cores, cp.async pipeline).
//
// Tiles: one thread block computes a kBM x kBN tile of y (rows of ONE group x output columns),
// walking k in steps of kBK. 8 warps in a kWarpsM x kWarpsN grid; each warp owns a
// (kBM / kWarpsM) x (kBN / kWarpsN) piece = kMI m16 tiles x kNI n8 tiles of f32 accumulators.
// Default 128 x 128 x 32, warps 2 x 4 of 64 x 32 each (64 f32 accumulators per thread), 4-stage
// cp.async ring in dynamic shared memory: 4 · (128 + 128) · 40 · 2 B = 80 KiB, two blocks per SM.
// Arithmetic intensity of a block per k step: 2·128·128·32 flop / (256·32·2 B) = 64 flop/B from
// shared memory; each warp does 16 mma per 6 ldmatrix.x4.
//
// Shared memory rows are padded by 8 bf16 (16 B): a row is kBK + 8 = 40 elements = 80 B, so the 8
// row addresses of one ldmatrix (offsets 0, 80, ..., 560 B -> 16-B slots 0, 5, 2, 7, 4, 1, 6, 3 mod
// 8) hit distinct bank groups: conflict-free (same reasoning as flash_attention.cu's kPad).
//
// Scheduling without host counts: grouped_gemm_tiles.cuh (shared with the Hopper kernel,
// grouped_gemm_sm90a.cu, which runs instead on compute 9.0 GPUs). x (n tiles) is the fastest grid
// dimension, so the blocks of one m tile run together and share the A rows in L2, and consecutive
// m tiles of a group reuse W_g from L2.
//
// Edges: rows past the group's end and columns past n or k are zero-filled by cp.async (src-size
// 0: nothing is read); stores are masked by row and column. n and k are multiples of 8, so a
// 16-byte chunk is either wholly inside or wholly outside, and an n8 tile is never split.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/grouped_gemm.hpp"
#include "engine/backend/cuda/grouped_gemm_tiles.cuh"
#include "engine/backend/cuda/mma_ptx.cuh"

namespace refinery::backend::cuda {

namespace {

using bf16 = __nv_bfloat16;
using grouped_gemm_detail::a_row;
using grouped_gemm_detail::find_m_tile;
using grouped_gemm_detail::MTile;
using grouped_gemm_detail::Params;
using grouped_gemm_detail::store_pair;

constexpr int kPad = 8;  // bf16 elements appended to every shared row (16 bytes)

template <int BM, int BN, int BK, int STAGES, int WARPS_M, int WARPS_N, int MIN_BLOCKS>
struct TileConfig {
  static constexpr int kBM = BM, kBN = BN, kBK = BK, kStages = STAGES;
  static constexpr int kWarpsM = WARPS_M, kWarpsN = WARPS_N, kMinBlocks = MIN_BLOCKS;
  static constexpr int kThreads = WARPS_M * WARPS_N * 32;
  static constexpr int kWarpM = BM / WARPS_M, kWarpN = BN / WARPS_N;  // one warp's output piece
  static constexpr int kMI = kWarpM / 16, kNI = kWarpN / 8;           // m16 and n8 tiles per warp
  static constexpr int kStride = BK + kPad;                           // elements per shared row
  static constexpr int kAElems = BM * kStride, kBElems = BN * kStride;  // one stage of A, of B
  static constexpr size_t kSmemBytes = sizeof(bf16) * STAGES * (kAElems + kBElems);
  static_assert(kWarpsM * kWarpM == BM && kWarpsN * kWarpN == BN, "warps tile the block");
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tiles are whole ldmatrix.x4 blocks");
  static_assert(BK % 16 == 0, "k steps of the mma are 16");
  static_assert((BM * BK / 8) % kThreads == 0 && (BN * BK / 8) % kThreads == 0,
                "every thread copies the same number of 16-byte chunks");
  static_assert(STAGES >= 2, "a pipeline needs two stages at least");
};

// 128 x 128 x 32, 4 stages, warps 2 x 4 (64 x 32 each), 2 blocks per SM (80 KiB each).
using Config128x128 = TileConfig<128, 128, 32, 4, 2, 4, 2>;
// 128 x 256 x 32, 4 stages, warps 2 x 4 (64 x 64 each, 128 accumulators), 1 block per SM
// (120 KiB). Selected with REFINERY_GGEMM_TILE=128x256 (for benchmarking; not the default).
using Config128x256 = TileConfig<128, 256, 32, 4, 2, 4, 1>;

// ---- PTX wrappers: mma_ptx.cuh ----------------------------------------------------------------
using namespace ptx;

// Rows [0, ROWS) x columns [k0, k0 + BK) of a row-major bf16 matrix into a shared stage of rows of
// BK + kPad elements; rows >= rows_valid and columns >= k are zero. Row r starts at row_of(r).
// Consecutive threads take consecutive 16-byte chunks of a row (BK = 32: 4 threads per 64-B row
// piece; each 64-B piece is 2 full sectors).
template <class C, int ROWS, class RowOf>
__device__ __forceinline__ void load_stage(bf16* dst, RowOf row_of, int64_t k, int rows_valid,
                                           int k0, const bf16* readable) {
  constexpr int kChunksPerRow = C::kBK / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
#pragma unroll
  for (int i = 0; i < kChunks / C::kThreads; ++i) {
    const int chunk = i * C::kThreads + static_cast<int>(threadIdx.x);
    const int row = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * 8;
    const bool valid = row < rows_valid && k0 + col < k;
    const bf16* from = valid ? row_of(row) + k0 + col : readable;  // always a readable address
    cp_async_16(shared_address(dst + row * C::kStride + col), from, valid);
  }
}

// ---- the kernel --------------------------------------------------------------------------------

template <class C, class OutT>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) grouped_gemm_kernel(const Params p) {
  constexpr int kBM = C::kBM, kBN = C::kBN, kBK = C::kBK, kStages = C::kStages;
  constexpr int kMI = C::kMI, kNI = C::kNI, kS = C::kStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const a_s = reinterpret_cast<bf16*>(smem_raw);  // [kStages][kBM][kS]  x rows
  bf16* const b_s = a_s + kStages * C::kAElems;         // [kStages][kBN][kS]  W_g rows (= B cols)
  __shared__ MTile tile;

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int m_tile = static_cast<int>(blockIdx.y);

  // ---- which group and rows this block owns (warp 0; grouped_gemm_tiles.cuh) ----
  if (warp == 0) {
    const MTile t = find_m_tile<kBM>(p, m_tile, lane);
    if (lane == 0) tile = t;
  }
  __syncthreads();
  if (tile.group < 0) return;  // past the last real tile (the grid is an upper bound): whole block
  const int group = tile.group, row0 = tile.row0, rows_valid = tile.rows;
  const int n0 = static_cast<int>(blockIdx.x) * kBN;

  const int64_t k = p.k;
  const bf16* const b_src = p.w + (int64_t{group} * p.n + n0) * k;            // [n - n0, k]
  const auto a_rows = [&](int row) { return a_row(p, row0, row); };
  const auto b_rows = [&](int row) { return b_src + row * k; };
  const int cols_valid = p.n - n0;
  const int k_tiles = (p.k + kBK - 1) / kBK;

  auto load = [&](int kt, int stage) {
    load_stage<C, kBM>(a_s + stage * C::kAElems, a_rows, k, rows_valid, kt * kBK, p.x);
    load_stage<C, kBN>(b_s + stage * C::kBElems, b_rows, k, cols_valid, kt * kBK, p.w);
  };

  // Prologue: tiles 0 .. kStages-2 in flight, one commit group each (empty groups past k_tiles
  // keep the count uniform, so wait_group<kStages-2> below always means "tile kt has landed").
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load(s, s);
    cp_async_commit();
  }

  const int warp_m = warp / C::kWarpsN, warp_n = warp % C::kWarpsN;
  const int g = lane >> 2, c = lane & 3;  // mma fragment coordinates (see mma_bf16_16x8x16)

  // ldmatrix lane addressing (see flash_attention.cu for the same derivation):
  //   A (x tile, 16 rows x 16 k): matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15) in the order
  //     a[0..3]: lane L gives row L % 16, k 8 · (L / 16).
  //   B (B[k][n] = W_g[n][k]: W rows are B columns, no transpose): matrices (n 0-7, k 0-7),
  //     (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) = {b0, b1} of n tile 2j and of n tile
  //     2j+1: lane L gives n row L % 8 + 8 · (L / 16), k 8 · ((L / 8) % 2).
  const int a_ld_row = warp_m * C::kWarpM + (lane & 15), a_ld_col = (lane >> 4) * 8;
  const int b_ld_row = warp_n * C::kWarpN + (lane & 7) + ((lane >> 4) << 3);
  const int b_ld_col = ((lane >> 3) & 1) * 8;

  // acc[i][j]: rows warp_m·kWarpM + 16i + (g, g+8), cols warp_n·kWarpN + 8j + 2c, +1.
  float acc[kMI][kNI][4];
#pragma unroll
  for (int i = 0; i < kMI; ++i)
#pragma unroll
    for (int j = 0; j < kNI; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();  // groups 0..kt complete: tile kt is in its stage
    __syncthreads();               // ... for every thread's copies; and every warp left stage kt-1
    // Refill the stage computed in iteration kt-1 (released by the barrier above) with tile
    // kt + kStages - 1; it lands while this and the next kStages - 2 tiles are computed.
    const int next = kt + kStages - 1;
    if (next < k_tiles) load(next, next % kStages);
    cp_async_commit();

    const int stage = kt % kStages;
    const bf16* const a_tile = a_s + stage * C::kAElems;
    const bf16* const b_tile = b_s + stage * C::kBElems;
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      uint32_t a[kMI][4];
      uint32_t b[kNI / 2][4];
#pragma unroll
      for (int i = 0; i < kMI; ++i)
        ldmatrix_x4(a[i], shared_address(a_tile + (a_ld_row + 16 * i) * kS + kk * 16 + a_ld_col));
#pragma unroll
      for (int j = 0; j < kNI / 2; ++j)
        ldmatrix_x4(b[j], shared_address(b_tile + (b_ld_row + 16 * j) * kS + kk * 16 + b_ld_col));
#pragma unroll
      for (int i = 0; i < kMI; ++i)
#pragma unroll
        for (int j = 0; j < kNI / 2; ++j) {
          mma_bf16_16x8x16(acc[i][2 * j], a[i], b[j][0], b[j][1]);
          mma_bf16_16x8x16(acc[i][2 * j + 1], a[i], b[j][2], b[j][3]);
        }
    }
  }
  cp_async_wait<0>();  // only empty groups can be pending here; leave nothing in flight

  // ---- epilogue: masked stores straight from the accumulators ----
  OutT* const y = static_cast<OutT*>(p.y);
#pragma unroll
  for (int i = 0; i < kMI; ++i)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = warp_m * C::kWarpM + 16 * i + g + 8 * r;  // within the tile
      if (row >= rows_valid) continue;
      OutT* const y_row = y + (int64_t{row0} + row) * p.n + n0;
#pragma unroll
      for (int j = 0; j < kNI; ++j) {
        const int col = warp_n * C::kWarpN + 8 * j + 2 * c;  // within the tile
        if (col < cols_valid) store_pair(y_row, col, acc[i][j][2 * r], acc[i][j][2 * r + 1]);
      }
    }
}

template <class C, class OutT>
void launch(const Params& params, int64_t m_tiles_bound, cudaStream_t stream) {
  constexpr size_t kSmem = C::kSmemBytes;
  // Above 48 KiB of dynamic shared memory needs an explicit opt-in (per kernel, cheap to repeat).
  REFINERY_CUDA_CHECK(cudaFuncSetAttribute(grouped_gemm_kernel<C, OutT>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(kSmem)));
  const int64_t n_tiles = (params.n + C::kBN - 1) / C::kBN;
  REFINERY_CHECK(m_tiles_bound <= 65535 && n_tiles <= (int64_t{1} << 31) - 1,
                 "grouped_gemm: ", m_tiles_bound, " row tiles exceed the grid limit 65535");
  const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(m_tiles_bound));
  grouped_gemm_kernel<C, OutT><<<grid, C::kThreads, kSmem, stream>>>(params);
  REFINERY_CUDA_CHECK_LAUNCH("grouped_gemm");
}

template <class C>
void launch_config(const GroupedGemmArgs& a, const Params& params, cudaStream_t stream) {
  // Σ_g ceil(rows_g / BM) <= ceil(rows_total / BM) + groups (see the file comment).
  const int64_t m_tiles_bound = (a.rows_total + C::kBM - 1) / C::kBM + a.groups;
  if (a.y_f32)
    launch<C, float>(params, m_tiles_bound, stream);
  else
    launch<C, bf16>(params, m_tiles_bound, stream);
}

// REFINERY_GGEMM_KERNEL=mma: kAuto runs mma.sync even where wgmma could (read per call).
bool mma_forced() {
  const char* v = std::getenv("REFINERY_GGEMM_KERNEL");
  return v != nullptr && std::strcmp(v, "mma") == 0;
}

}  // namespace

bool grouped_gemm_supports(int64_t n, int64_t k) {
  return n > 0 && k > 0 && n % 8 == 0 && k % 8 == 0;
}

bool grouped_gemm_wgmma_available() { return grouped_gemm_detail::wgmma_available(); }

bool grouped_gemm_fused_swiglu_available() {
  return !mma_forced() && grouped_gemm_detail::wgmma_available();
}

void grouped_gemm_bf16(const GroupedGemmArgs& a, void* stream, GroupedGemmKernel kernel) {
  REFINERY_CHECK(grouped_gemm_supports(a.n, a.k), "grouped_gemm: n ", a.n, ", k ", a.k,
                 " are not supported (both must be positive multiples of 8; ask "
                 "grouped_gemm_supports first)");
  REFINERY_CHECK(a.groups > 0 && a.rows_total >= 0, "grouped_gemm: inconsistent sizes groups ",
                 a.groups, ", rows_total ", a.rows_total);
  // Row and column indices are int in the kernel; element offsets are 64-bit.
  REFINERY_CHECK(a.rows_total < (int64_t{1} << 31) - 512 && a.n < (int64_t{1} << 31) - 512 &&
                     a.k < (int64_t{1} << 31) - 512 && a.groups < (int64_t{1} << 31),
                 "grouped_gemm: sizes rows_total ", a.rows_total, ", n ", a.n, ", k ", a.k,
                 ", groups ", a.groups, " exceed the kernel's int range");
  if (a.rows_total == 0) return;
  REFINERY_CHECK(aligned16(a.x) && aligned16(a.w) && aligned16(a.y) && a.offsets != nullptr,
                 "grouped_gemm: x, w and y must be 16-byte aligned (cp.async) and offsets set");
  const Params params{static_cast<const bf16*>(a.x), static_cast<const bf16*>(a.w), a.y,
                      a.offsets,
                      static_cast<int>(a.groups),
                      static_cast<int>(a.rows_total),
                      static_cast<int>(a.n),
                      static_cast<int>(a.k),
                      a.x_rows,
                      a.swiglu};
  const auto s = static_cast<cudaStream_t>(stream);
  REFINERY_CHECK(!a.swiglu || (!a.y_f32 && kernel != GroupedGemmKernel::kMmaSync &&
                                grouped_gemm_detail::wgmma_available()),
                 "grouped_gemm: the fused SwiGLU needs the wgmma kernel (a compute 9.0 GPU) and a "
                 "bf16 output");
  if (a.swiglu || kernel == GroupedGemmKernel::kWgmma ||
      (kernel == GroupedGemmKernel::kAuto && !mma_forced() && grouped_gemm_detail::wgmma_available())) {
    grouped_gemm_detail::launch_wgmma(params, a.y_f32, a.rows_total, a.groups, s);
    return;
  }
  // The wide tile is opt-in for benchmarking (getenv per call: ~100 ns next to the launch).
  const char* tile = std::getenv("REFINERY_GGEMM_TILE");
  if (tile != nullptr && std::strcmp(tile, "128x256") == 0)
    launch_config<Config128x256>(a, params, s);
  else
    launch_config<Config128x128>(a, params, s);
}

}  // namespace refinery::backend::cuda
