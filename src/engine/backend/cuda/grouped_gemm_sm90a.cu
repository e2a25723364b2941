// Grouped GEMM for the MoE experts on Hopper (sm_90a): y[rows of g] = x[rows of g] · W_gᵀ for every
// group g in one launch, with warpgroup MMAs (wgmma.mma_async) reading both operands from shared
// memory. Same contract and scheduling as grouped_gemm.cu (grouped_gemm_tiles.cuh); this file is
// compiled for sm_90a only (CMakeLists.txt: *_sm90a.cu) and its launcher refuses other devices.
//
// Why: mma.sync (grouped_gemm.cu) tops out far below the H100's tensor-core rate (142-169 TFLOP/s
// on the V2-Lite experts, docs/BENCHMARKS.md); wgmma is the instruction that reaches it.
//
// Block tile 128 (rows: tokens of one group) x BN (output columns) x 64 (k), 256 threads = two
// warpgroups, warpgroup w computes rows 64w..64w+63 with m64nBNk16 MMAs (4 per k tile).
// Operands: x rows and W_g rows are both K-major (k contiguous), the wgmma "TN" case (no
// transposes). Each stage holds A [128][64] and B [BN][64] bf16, every row 128 bytes, stored with
// the 128-byte swizzle that the descriptors declare: the 16-byte chunk c of row r sits at
//   r · 128 + ((c ^ (r % 8)) · 16)        (tile bases 1024-byte aligned)
// which is what TMA's SWIZZLE_128B writes. The gathered A rows (x_rows) are written by cp.async
// (zero-filling rows past the group and columns past k); the default kernel loads the weight rows
// (and A rows read in place) by TMA from one 2-D tensor map over the whole stack (ws_kernel).
// Pipeline (STAGES deep, one cp.async group per k tile):
//   wait for tile kt -> fence.proxy.async (cp.async wrote through the generic proxy, wgmma reads
//   through the async proxy) -> barrier -> 4 wgmma on tile kt, commit -> wait until at most one
//   wgmma group is pending (so tile kt-1's MMAs are done) -> barrier -> refill tile kt-1's stage
//   with tile kt + STAGES - 1.
// Two kernels share the tiles, the swizzled stages and the epilogue: wgmma_kernel (above: every
// thread copies and multiplies, one block-wide barrier pair per k tile) and ws_kernel (warp-
// specialized: a producer warpgroup copies, two consumer warpgroups multiply, mbarriers between
// them; persistent over a tile list, TMA weights: the default, 128 x 256 tiles, see its comment).
// Accumulator layout of m64nNk16 (f32): warp q of the warpgroup owns rows 16q..16q+15; lane L holds
// for every n8 block i: d[4i], d[4i+1] = (row 16q + L/4, cols 8i + 2(L%4), +1) and d[4i+2], d[4i+3]
// = (row 16q + L/4 + 8, same cols) — the mma.sync C fragment repeated.
#include <cuda.h>  // CUtensorMap and its enums (the encoder is fetched from the driver at run time)
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/backend/cuda/grouped_gemm_tiles.cuh"
#include "engine/backend/cuda/mma_ptx.cuh"
#include "engine/backend/cuda/wgmma_ptx.cuh"

namespace refinery::backend::cuda::grouped_gemm_detail {

namespace {

using bf16 = __nv_bfloat16;
using namespace ptx;

template <int BN, int STAGES, int MIN_BLOCKS>
struct WgmmaConfig {
  static constexpr int kBM = 128, kBN = BN, kBK = 64, kStages = STAGES, kMinBlocks = MIN_BLOCKS;
  static constexpr bool kWarpSpecialized = false;
  static constexpr int kThreads = 256;              // two warpgroups
  static constexpr int kAcc = BN / 2;               // f32 accumulators per thread (64 x BN / 128)
  static constexpr int kAStage = kBM * kBK * 2;     // bytes of one A stage (128 rows x 128 B)
  static constexpr int kBStage = kBN * kBK * 2;     // bytes of one B stage
  static constexpr size_t kSmemBytes = size_t{STAGES} * (kAStage + kBStage) + 1024;  // + alignment
  static_assert(BN == 128 || BN == 256, "wgmma shapes m64n128k16 and m64n256k16 are wrapped");
};

// 128 x 128 x 64, 3 stages (97 KiB, two blocks per SM): REFINERY_GGEMM_TILE=128x128.
using Narrow = WgmmaConfig<128, 3, 2>;
// 128 x 256 x 64, 4 stages (193 KiB, one block per SM), 128 accumulators per thread;
// REFINERY_GGEMM_TILE=128x256.
using Wide = WgmmaConfig<256, 4, 1>;

// The warp-specialized kernel (ws_kernel below): 384 threads = a producer warpgroup that only
// copies and two consumer warpgroups that only multiply, one block per SM.
template <int BN, int STAGES, bool PERSISTENT, bool TMA_B = false>
struct WsConfig {
  static constexpr int kBM = 128, kBN = BN, kBK = 64, kStages = STAGES;
  static constexpr bool kWarpSpecialized = true, kPersistent = PERSISTENT;
  // The weight (B) tiles by TMA (two 128-row boxes per stage, one thread issues them) instead of
  // the producer warpgroup's cp.async; A keeps cp.async (its rows are gathered through x_rows).
  static constexpr bool kTmaB = TMA_B;
  static constexpr int kThreads = 384;              // producer + two consumer warpgroups
  static constexpr int kProducerThreads = 128;
  static constexpr int kAcc = BN / 2;               // f32 accumulators per consumer thread
  static constexpr int kAStage = kBM * kBK * 2;
  static constexpr int kBStage = kBN * kBK * 2;
  static constexpr size_t kSmemBytes = size_t{STAGES} * (kAStage + kBStage) + 1024;
  static_assert(BN == 128 || BN == 256, "wgmma shapes m64n128k16 and m64n256k16 are wrapped");
};
// 128 x 256 x 64 in 4 stages (193 KiB), one block per SM looping over the tiles, the weights
// loaded by TMA: the default (REFINERY_GGEMM_TILE=tws128x256); the same with cp.async weights:
// pws128x256; one block per tile (cp.async): ws128x256.
using TmaPersistentWsWide = WsConfig<256, 4, true, true>;
using PersistentWsWide = WsConfig<256, 4, true>;
using WsWide = WsConfig<256, 4, false>;
// 128 x 128 x 64 in 6 stages (193 KiB), one block per tile: REFINERY_GGEMM_TILE=ws128x128.
using WsNarrow = WsConfig<128, 6, false>;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// PTX wrappers (fences, mbarriers, descriptors, wgmma shapes): wgmma_ptx.cuh.

template <int BN>
struct Wgmma;
template <>
struct Wgmma<128> {
  __device__ static void mma(float (&d)[64], uint64_t a, uint64_t b) { wgmma_m64n128k16(d, a, b); }
};
template <>
struct Wgmma<256> {
  __device__ static void mma(float (&d)[128], uint64_t a, uint64_t b) { wgmma_m64n256k16(d, a, b); }
};

// Rows [0, ROWS) x columns [k0, k0 + 64) of a row-major bf16 matrix (row r starts at row_of(r))
// into one swizzled stage at shared address `dst`; rows >= rows_valid, rows whose row_of is
// nullptr and columns >= k are zero.
// 8 threads per 128-byte row piece (coalesced).
template <int ROWS, class RowOf>
__device__ __forceinline__ void load_stage(uint32_t dst, RowOf row_of, int64_t k, int rows_valid,
                                           int k0, const bf16* readable) {
  constexpr int kChunks = ROWS * 8;
  static_assert(kChunks % 256 == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kChunks / 256; ++i) {
    const int chunk = i * 256 + static_cast<int>(threadIdx.x);
    const int row = chunk >> 3, c = chunk & 7;
    const bf16* row_start = row < rows_valid ? row_of(row) : nullptr;  // nullptr: a zero row
    const bool valid = row_start != nullptr && k0 + c * 8 < k;
    const bf16* from = valid ? row_start + k0 + c * 8 : readable;  // always a readable address
    cp_async_16(dst + row * 128 + ((c ^ (row & 7)) << 4), from, valid);
  }
}

// Where row `row` of a block's B tile starts: W_g row n0 + row, or for kSwiglu (the tile pairs
// BN/2 gate rows with the same BN/2 up rows of the stacked [2n, k] gate|up weight) gate row
// n0 + row for row < BN/2, else up row n0 + row - BN/2. nullptr past the weight's rows (zeros).
template <int kBN, bool kSwiglu>
__device__ __forceinline__ const bf16* weight_row(const Params& p, const bf16* w_g, int n0, int row) {
  if constexpr (kSwiglu) {
    constexpr int kHalf = kBN / 2;
    const int j = n0 + row % kHalf;
    return j < p.n ? w_g + (int64_t{row / kHalf} * p.n + j) * p.k : nullptr;
  } else {
    return n0 + row < p.n ? w_g + int64_t{n0 + row} * p.k : nullptr;
  }
}

// Writes the 64 x BN accumulator block of warpgroup `wg` (tile rows 64·wg ..; `warp` is the
// thread's warp within its warpgroup). kSwiglu: gate column c (accumulator block i < BN/16) and
// up column c (block i + BN/16) sit in the same thread, which writes silu(gate) · up to column
// n0 + c of y [rows, n].
template <int kBN, class OutT, bool kSwiglu, int kAcc>
__device__ __forceinline__ void store_accumulators(const Params& p, const float (&acc)[kAcc], int wg,
                                                   int warp, int lane, int row0, int rows_valid,
                                                   int n0) {
  OutT* const y = static_cast<OutT*>(p.y);
  const int cols_valid = p.n - n0;  // output columns of this tile that exist
  const int row_base = wg * 64 + warp * 16 + (lane >> 2);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row_base + 8 * r;  // within the tile
    if (row >= rows_valid) continue;
    OutT* const y_row = y + (int64_t{row0} + row) * p.n + n0;
    if constexpr (kSwiglu) {
      // silu(g) · u = g · u / (1 + e^-g) with the MUFU exponential and an approximate division:
      // expf and an IEEE division cost ~40 instructions per element, which made the epilogue 12%
      // of the kernel (457 vs 519 TFLOP/s without SwiGLU, H100). Relative error ~1e-6, far below
      // the bf16 rounding of the result; g < -87 (e^-g > 2^126) gives 0 (the true value < 1e-36).
      const auto silu_times = [](float g, float u) { return __fdividef(g * u, 1.0f + __expf(-g)); };
#pragma unroll
      for (int i = 0; i < kBN / 16; ++i) {
        const int col = 8 * i + 2 * (lane & 3);
        const int up = 4 * (i + kBN / 16) + 2 * r;  // the up accumulators of the same columns
        if (col < cols_valid)
          store_pair(y_row, col, silu_times(acc[4 * i + 2 * r], acc[up]),
                     silu_times(acc[4 * i + 2 * r + 1], acc[up + 1]));
      }
    } else {
#pragma unroll
      for (int i = 0; i < kBN / 8; ++i) {
        const int col = 8 * i + 2 * (lane & 3);
        if (col < cols_valid) store_pair(y_row, col, acc[4 * i + 2 * r], acc[4 * i + 2 * r + 1]);
      }
    }
  }
}

// Warpgroup `wg`'s MMAs on one k tile held in shared memory at (a_stage, b_stage).
template <int kBN, int kBK, int kAcc>
__device__ __forceinline__ void mma_tile(float (&acc)[kAcc], uint32_t a_stage, uint32_t b_stage,
                                         int wg) {
  const uint64_t a_desc = make_descriptor(a_stage + wg * 64 * 128);
  const uint64_t b_desc = make_descriptor(b_stage);
  wgmma_fence();
  fence_accumulators(acc);
#pragma unroll
  for (int kk = 0; kk < kBK / 16; ++kk) Wgmma<kBN>::mma(acc, a_desc + 2 * kk, b_desc + 2 * kk);
  wgmma_commit();
  fence_accumulators(acc);
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// kSwiglu (BN 128 here): the block's 128 B rows are expert rows j0..j0+63 of the gate and the same
// of the up projection (j0 = 64 · blockIdx.x): see weight_row and store_accumulators.
template <class C, class OutT, bool kSwiglu>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) wgmma_kernel(const Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBM = C::kBM, kBN = C::kBN, kBK = C::kBK, kStages = C::kStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ MTile tile;
  const uint32_t base = (shared_address(smem_raw) + 1023u) & ~1023u;  // swizzle atoms: 1024 B
  const uint32_t a_base = base, b_base = base + kStages * C::kAStage;

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  if (warp == 0) {
    const MTile t = find_m_tile<kBM>(p, static_cast<int>(blockIdx.y), lane);
    if (lane == 0) tile = t;
  }
  __syncthreads();
  if (tile.group < 0) return;  // past the last real tile (the grid is an upper bound)
  const int row0 = tile.row0, rows_valid = tile.rows, group = tile.group;
  const int n0 = static_cast<int>(blockIdx.x) * (kSwiglu ? kBN / 2 : kBN);  // first output column
  const int64_t k = p.k;
  const int64_t w_rows = kSwiglu ? 2 * int64_t{p.n} : p.n;  // rows of W_g
  const bf16* const w_g = p.w + int64_t{group} * w_rows * k;
  const auto a_rows = [&](int row) { return a_row(p, row0, row); };
  const auto b_rows = [&](int row) { return weight_row<kBN, kSwiglu>(p, w_g, n0, row); };
  const int k_tiles = (p.k + kBK - 1) / kBK;

  auto load = [&](int kt, int stage) {
    load_stage<kBM>(a_base + stage * C::kAStage, a_rows, k, rows_valid, kt * kBK, p.x);
    load_stage<kBN>(b_base + stage * C::kBStage, b_rows, k, kBN, kt * kBK, p.w);
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load(s, s);
    cp_async_commit();  // empty groups past k_tiles keep the group count uniform
  }

  const int wg = static_cast<int>(threadIdx.x) / 128;  // warpgroup: rows 64·wg ..
  float acc[C::kAcc];
#pragma unroll
  for (int i = 0; i < C::kAcc; ++i) acc[i] = 0.0f;

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<kStages - 2>();  // this thread's copies of tile kt have landed
    fence_proxy_async();           // ... and are visible to the MMAs' async proxy
    __syncthreads();               // ... for every thread's copies
    const int stage = kt % kStages;
    mma_tile<kBN, kBK>(acc, a_base + stage * C::kAStage, b_base + stage * C::kBStage, wg);
    wgmma_wait<1>();  // this warpgroup's MMAs of tile kt-1 are done
    fence_accumulators(acc);
    __syncthreads();  // ... every warpgroup's: tile kt-1's stage is free
    const int next = kt + kStages - 1;
    if (next < k_tiles) load(next, next % kStages);
    cp_async_commit();
  }
  wgmma_wait<0>();
  fence_accumulators(acc);
  cp_async_wait<0>();  // only empty groups can be pending; leave nothing in flight
  store_accumulators<kBN, OutT, kSwiglu>(p, acc, wg, warp % 4, lane, row0, rows_valid, n0);
#else
  __trap();  // compiled for sm_90a only; the launcher checks the device first
#endif
}

// The warp-specialized kernel: no block-wide barrier in the k loop, and a loop over output tiles.
//   Tiles: linear index i = m_tile · n_tiles + n_tile (grouped_gemm_tiles.cuh's m tiles); block b
//     takes tiles b, b + gridDim.x, ... until find_m_tile runs past the last real m tile. Launched
//     with one block per tile this is the classic one-tile kernel; launched persistent (one block
//     per SM, the default) the producer fills the stages of a block's next tile while the
//     consumers still run the previous tile's epilogue, and no block is launched per tile.
//   producer warpgroup (threads 0..127): for every k tile, waits until the ring stage is free
//     (empty[stage]), issues the cp.async copies of the A and B tiles into it, and has the copy
//     hardware arrive on full[stage] when they land (cp.async.mbarrier.arrive.noinc; count 128).
//     Thread t always copies 16-byte chunk t % 8 of rows t / 8 + 16 i, so its source rows (the
//     routing permutation of A, the weight rows of B) are looked up once per tile, not per k tile,
//     and the swizzled destination offset is one constant.
//   consumer warpgroups 1 and 2 (tile rows 0..63 and 64..127): wait for full[stage], make the
//     copies visible to the async proxy, issue the tile's 4 wgmma, and once the previous k tile's
//     MMAs are done (wgmma.wait_group 1) arrive on its empty[stage] (count 256); the last k tile's
//     stage is released after wgmma.wait_group 0, before the epilogue.
//   kTmaB (the default tile): one producer thread loads each stage's weight rows by TMA (two
//     128-row boxes) and declares their bytes on full[stage] (count 128 + 1); when x is read in
//     place (no x_rows: the down projection) the A rows come by TMA too and the other producer
//     threads only arrive. TMA writes the same 128-byte swizzle as the cp.async path. H100, V2-Lite
//     shapes: +13% on gate|up with SwiGLU, +6% on down over cp.async weights (docs/BENCHMARKS.md).
//   Every warp finds its tile's (group, rows) itself (find_m_tile is warp-collective and reads
//   offsets that stay in L1), so producer and consumers never wait on each other per tile.
// Parity: the ring is used in one sequence over all k tiles of all of a block's tiles (counter
// `it`); the n-th use (n = it / STAGES) of a stage completes phase n of its full barrier, so
// consumers wait for parity n & 1; the producer's n-th refill waits for the consumers' release of
// use n - 1, parity (n - 1) & 1.
template <class C, class OutT, bool kSwiglu>
__global__ void __launch_bounds__(C::kThreads, 1)
    ws_kernel(const Params p, int n_tiles, const __grid_constant__ CUtensorMap b_map,
              const __grid_constant__ CUtensorMap a_map, bool a_by_tma) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kBM = C::kBM, kBN = C::kBN, kBK = C::kBK, kStages = C::kStages;
  constexpr int kColsPerTile = kSwiglu ? kBN / 2 : kBN;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ alignas(8) uint64_t full[kStages], empty[kStages];
  const uint32_t base = (shared_address(smem_raw) + 1023u) & ~1023u;  // swizzle atoms: 1024 B
  const uint32_t a_base = base, b_base = base + kStages * C::kAStage;

  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  if (threadIdx.x == 32) {
    for (int s = 0; s < kStages; ++s) {
      // kTmaB: + the arrival of the thread that issues the TMA loads with their byte count.
      mbarrier_init(shared_address(&full[s]), C::kProducerThreads + (C::kTmaB ? 1 : 0));
      mbarrier_init(shared_address(&empty[s]), C::kThreads - C::kProducerThreads);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  const int k_tiles = (p.k + kBK - 1) / kBK;
  const int wg = static_cast<int>(threadIdx.x) / 128;
  int it = 0;  // ring uses so far (k tiles of the previous tiles of this block)

  if (wg == 0) {  // producer
    const int t = static_cast<int>(threadIdx.x), c = t % 8, r0 = t / 8;  // rows r0 + 16 i
    const int64_t w_rows = kSwiglu ? 2 * int64_t{p.n} : p.n;
    // Row r0 + 16 i of a stage, chunk c: byte (r0 + 16 i) · 128 + ((c ^ (r0 % 8)) · 16).
    const uint32_t chunk_offset = r0 * 128 + ((c ^ (r0 % 8)) << 4);
    for (int tile = static_cast<int>(blockIdx.x);; tile += static_cast<int>(gridDim.x)) {
      const MTile mt = find_m_tile<kBM>(p, tile / n_tiles, lane);
      if (mt.group < 0) break;  // past the last real tile
      const int n0 = (tile % n_tiles) * kColsPerTile;
      const bf16* const w_g = p.w + int64_t{mt.group} * w_rows * p.k;
      const bf16* a_src[kBM / 16];
      const bf16* b_src[kBN / 16];
#pragma unroll
      for (int i = 0; i < kBM / 16; ++i)
        a_src[i] = r0 + 16 * i < mt.rows ? a_row(p, mt.row0, r0 + 16 * i) : nullptr;
      if constexpr (!C::kTmaB) {
#pragma unroll
        for (int i = 0; i < kBN / 16; ++i) b_src[i] = weight_row<kBN, kSwiglu>(p, w_g, n0, r0 + 16 * i);
      }
      for (int kt = 0; kt < k_tiles; ++kt, ++it) {
        const int stage = it % kStages, use = it / kStages;
        if (use > 0) mbarrier_wait(shared_address(&empty[stage]), (use - 1) & 1);
        const int k0 = kt * kBK + c * 8;
        const bool k_valid = k0 < p.k;
        const uint32_t a_dst = a_base + stage * C::kAStage + chunk_offset;
        const uint32_t b_dst = b_base + stage * C::kBStage + chunk_offset;
        if (!a_by_tma) {
#pragma unroll
          for (int i = 0; i < kBM / 16; ++i) {
            const bool valid = k_valid && a_src[i] != nullptr;
            cp_async_16(a_dst + i * 16 * 128, valid ? a_src[i] + k0 : p.x, valid);
          }
        }
        if constexpr (C::kTmaB) {
          // Rows of W viewed as 2-D [groups · w_rows, k]: kSwiglu tiles take gate rows n0.. and up
          // rows n + n0.. of the group; others rows n0 .. n0 + 255. Rows past the group's own
          // (the next group's, or zeros past the end) only reach output columns >= n, which are
          // never stored.
          if (t == 0) {
            const uint32_t bar = shared_address(&full[stage]);
            const uint32_t b_stage = b_base + stage * C::kBStage;
            const int row = static_cast<int>(int64_t{mt.group} * w_rows) + n0;
            mbarrier_arrive_expect_tx(bar, C::kBStage + (a_by_tma ? C::kAStage : 0));
            // a_by_tma (x read in place, no x_rows): A rows row0 .. row0 + 127 in one box; rows
            // past the group (the next group's, or zeros past the end) are never stored.
            if (a_by_tma) tma_load_2d(a_base + stage * C::kAStage, &a_map, kt * kBK, mt.row0, bar);
            tma_load_2d(b_stage, &b_map, kt * kBK, row, bar);
            tma_load_2d(b_stage + 128 * 128, &b_map, kt * kBK, row + (kSwiglu ? p.n : 128), bar);
          }
        } else {
#pragma unroll
          for (int i = 0; i < kBN / 16; ++i) {
            const bool valid = k_valid && b_src[i] != nullptr;
            cp_async_16(b_dst + i * 16 * 128, valid ? b_src[i] + k0 : p.w, valid);
          }
        }
        cp_async_mbarrier_arrive(shared_address(&full[stage]));
      }
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");  // leave nothing in flight
    return;
  }

  // consumers
  const int cwg = wg - 1;  // tile rows 64·cwg ..
  float acc[C::kAcc];
  for (int tile = static_cast<int>(blockIdx.x);; tile += static_cast<int>(gridDim.x)) {
    const MTile mt = find_m_tile<kBM>(p, tile / n_tiles, lane);
    if (mt.group < 0) break;  // past the last real tile
    // A group's last tile often has <= 64 rows (about half of them): then the second consumer's
    // rows are all padding and it skips its MMAs (it still takes part in the barriers), which
    // saves ~4% of the tensor work on the V2-Lite experts (~770 rows per expert).
    const bool has_rows = 64 * cwg < mt.rows;
#pragma unroll
    for (int i = 0; i < C::kAcc; ++i) acc[i] = 0.0f;
    for (int kt = 0; kt < k_tiles; ++kt, ++it) {
      const int stage = it % kStages;
      mbarrier_wait(shared_address(&full[stage]), (it / kStages) & 1);
      fence_proxy_async();  // the cp.async writes (generic proxy) -> the wgmma reads (async proxy)
      if (has_rows)
        mma_tile<kBN, kBK>(acc, a_base + stage * C::kAStage, b_base + stage * C::kBStage, cwg);
      wgmma_wait<1>();  // the previous k tile's MMAs are done: its stage may be refilled
      fence_accumulators(acc);
      if (kt > 0) mbarrier_arrive(shared_address(&empty[(it - 1) % kStages]));
    }
    wgmma_wait<0>();
    fence_accumulators(acc);
    mbarrier_arrive(shared_address(&empty[(it - 1) % kStages]));  // the last k tile's stage
    store_accumulators<kBN, OutT, kSwiglu>(p, acc, cwg, warp % 4, lane, mt.row0, mt.rows,
                                           (tile % n_tiles) * kColsPerTile);
  }
#else
  __trap();  // compiled for sm_90a only; the launcher checks the device first
#endif
}

// The TMA descriptor of a bf16 matrix [rows, k] (k contiguous; the stacked weights viewed as 2-D,
// or x): boxes of 128 rows x 64 columns (128 bytes, the 128-byte swizzle of the shared stages),
// zeros outside. cuTensorMapEncodeTiled is a driver API function: fetched once through the runtime
// (cudaGetDriverEntryPointByVersion), so nothing links libcuda directly.
CUtensorMap rows_tensor_map(const void* matrix, int64_t rows, int64_t k) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    REFINERY_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                         cudaEnableDefault, &found));
    REFINERY_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr,
                   "grouped_gemm: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  REFINERY_CHECK(rows < (int64_t{1} << 31) && k % 8 == 0,
                 "grouped_gemm: rows ", rows, " or k ", k, " out of the TMA path's range");
  CUtensorMap map{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(k) * 2};  // bytes between rows
  const cuuint32_t box[2] = {64, 128};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult status = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2,
                                 const_cast<void*>(matrix), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                 CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  REFINERY_CHECK(status == CUDA_SUCCESS, "grouped_gemm: cuTensorMapEncodeTiled failed (",
                 static_cast<int>(status), ") for a ", rows, " x ", k, " matrix");
  return map;
}

template <class C, class OutT, bool kSwiglu>
void launch(const Params& params, int64_t rows_total, int64_t groups, cudaStream_t stream) {
  constexpr size_t kSmem = C::kSmemBytes;
  // Σ_g ceil(rows_g / BM) <= ceil(rows_total / BM) + groups (grouped_gemm_tiles.cuh).
  const int64_t m_tiles_bound = (rows_total + C::kBM - 1) / C::kBM + groups;
  const int64_t cols_per_tile = kSwiglu ? C::kBN / 2 : C::kBN;
  const int64_t n_tiles = (params.n + cols_per_tile - 1) / cols_per_tile;
  if constexpr (C::kWarpSpecialized) {
    const auto kernel = ws_kernel<C, OutT, kSwiglu>;
    CUtensorMap b_map{}, a_map{};  // unused unless kTmaB
    bool a_by_tma = false;          // kTmaB and x read in place: A by TMA too (no cp.async at all)
    if constexpr (C::kTmaB) {
      static_assert(C::kBN == 256 && C::kBM == 128, "128-row TMA boxes");
      const int64_t w_rows = (kSwiglu ? 2 : 1) * int64_t{params.n};
      b_map = rows_tensor_map(params.w, groups * w_rows, params.k);
      a_by_tma = params.x_rows == nullptr && rows_total > 0;
      if (a_by_tma) a_map = rows_tensor_map(params.x, rows_total, params.k);
    }
    REFINERY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kSmem)));
    const int64_t tiles_bound = m_tiles_bound * n_tiles;  // linear tile indices (ws_kernel)
    REFINERY_CHECK(tiles_bound < (int64_t{1} << 31), "grouped_gemm: ", tiles_bound,
                   " tiles exceed the kernel's int index");
    // Persistent: one block per SM walks the tiles (ws_kernel's comment); else one per tile.
    const int64_t blocks =
        C::kPersistent ? std::min<int64_t>(tiles_bound, refinery::cuda::current_device_sm_count())
                       : tiles_bound;
    kernel<<<static_cast<unsigned>(blocks), C::kThreads, kSmem, stream>>>(
        params, static_cast<int>(n_tiles), b_map, a_map, a_by_tma);
  } else {
    const auto kernel = wgmma_kernel<C, OutT, kSwiglu>;
    REFINERY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(kSmem)));
    REFINERY_CHECK(m_tiles_bound <= 65535, "grouped_gemm: ", m_tiles_bound,
                   " row tiles exceed the grid limit 65535");
    const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(m_tiles_bound));
    kernel<<<grid, C::kThreads, kSmem, stream>>>(params);
  }
  REFINERY_CUDA_CHECK_LAUNCH("grouped_gemm (wgmma)");
}

template <class C>
void launch_config(const Params& params, bool y_f32, int64_t rows_total, int64_t groups,
                   cudaStream_t stream) {
  if (params.swiglu)  // bf16 output (grouped_gemm.cu checks)
    launch<C, bf16, true>(params, rows_total, groups, stream);
  else if (y_f32)
    launch<C, float, false>(params, rows_total, groups, stream);
  else
    launch<C, bf16, false>(params, rows_total, groups, stream);
}

}  // namespace

bool wgmma_available() {
  int device = 0;
  REFINERY_CUDA_CHECK(cudaGetDevice(&device));
  static std::mutex mutex;
  static std::vector<int> known;  // per device: -1 unknown, 0 no, 1 yes
  const std::lock_guard<std::mutex> lock(mutex);
  if (known.size() <= static_cast<std::size_t>(device)) known.resize(device + 1, -1);
  if (known[device] < 0) {
    int major = 0, minor = 0;
    REFINERY_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    REFINERY_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    known[device] = major == 9 && minor == 0 ? 1 : 0;  // sm_90a code runs on compute 9.0 only
  }
  return known[device] == 1;
}

void launch_wgmma(const Params& params, bool y_f32, int64_t rows_total, int64_t groups,
                  cudaStream_t stream) {
  REFINERY_CHECK(wgmma_available(), "grouped_gemm: the wgmma kernel needs a compute 9.0 GPU");
  // REFINERY_GGEMM_TILE picks the tile and kernel (benchmarking): tws128x256 (warp-specialized,
  // persistent, TMA weights: the default), pws128x256 (the same with cp.async weights), ws128x256
  // and ws128x128 (warp-specialized, one block per tile), 128x128, 128x256 (one block-wide barrier
  // pair per k tile). H100, kernels_bench, V2-Lite shapes, T 8192 (docs/BENCHMARKS.md, 2026-11-28):
  // gate|up + SwiGLU 543 (tws), 481 (pws), 460 (ws128x256) TFLOP/s; down 496, 466, 463.
  const char* env = std::getenv("REFINERY_GGEMM_TILE");
  const std::string tile = env != nullptr ? env : "";
  if (tile == "128x128")
    launch_config<Narrow>(params, y_f32, rows_total, groups, stream);
  else if (tile == "128x256")
    launch_config<Wide>(params, y_f32, rows_total, groups, stream);
  else if (tile == "ws128x128")
    launch_config<WsNarrow>(params, y_f32, rows_total, groups, stream);
  else if (tile == "ws128x256")
    launch_config<WsWide>(params, y_f32, rows_total, groups, stream);
  else if (tile == "pws128x256")
    launch_config<PersistentWsWide>(params, y_f32, rows_total, groups, stream);
  else
    launch_config<TmaPersistentWsWide>(params, y_f32, rows_total, groups, stream);
}

}  // namespace refinery::backend::cuda::grouped_gemm_detail
