// Backward of the causal bf16 flash attention (FlashAttention-2 algorithm, deterministic variant).
//
// Sizes: q [T, H, dk], k [T, KV, dk], v [T, KV, dv], out/dout [T, H, dv]; g = H / KV query heads
// share a kv head. Scores are kept in log2 units: x = q·k·scale·log2 e, P = 2^(x − lse2).
// Three passes, none stores a score matrix and all skip the tiles above the diagonal:
//  1. lse_kernel, one block per (query tile of 64, head): recomputes the row log-sum-exp
//     lse2 = m + log2 Σ 2^(x − m) with an online max over the visible key tiles (S = Q·Kᵀ only,
//     the forward does not save it), and D = rowsum(dout ∘ out). Both f32 [H, T_pad] in the
//     workspace, T_pad = T rounded up to 64, zeros past T (so later tile loads never go out of
//     bounds and padded rows stay finite). When the forward handed over its lse (args.lse),
//     dsum_kernel computes D only and converts that lse to log2 units instead.
//  2. dkdv_kernel, one block per (key tile of 64, kv head, group split): each warp owns 16 keys
//     and walks the query tiles of BQ rows from the diagonal to T for the block's query heads:
//       Sᵀ = K·Qᵀ, Pᵀ = 2^(Sᵀ·scale·log2 e − lse2), dV += Pᵀ·dO, dPᵀ = V·dOᵀ,
//       dSᵀ = Pᵀ ∘ (dPᵀ − D), dK += dSᵀ·Q            (P, dS rounded to bf16 as mma operands)
//     Every product is warp-local (a warp's keys × all the tile's queries): no shared-memory
//     reductions. dK is scaled once at the end. With one split the block adds dK/dV into the
//     bf16 gradients; with several (the group's query heads divided among blocks, so that short
//     sequences still fill the GPU) it writes f32 partials [split, T, KV, d] that
//     reduce_partials_kernel sums in split order and adds to the gradients.
//  3. dq_kernel, one block per (query tile of 64, head): each warp owns 16 query rows and walks
//     the key tiles up to the diagonal: S = Q·Kᵀ, P, dP = dO·Vᵀ, dS = P ∘ (dP − D),
//     dQ += dS·K; dq += scale · dQ.
// Each gradient element is produced by exactly one block and summed in a fixed order: no
// atomics, bitwise reproducible. The price is recomputing S and dP in pass 3 (7 GEMM-sized
// products instead of the atomic variant's 5) plus S in pass 1.
//
// Tiles (bf16 in shared memory, rows padded by 8 elements as in flash_attention.cu), cp.async
// double buffers for the tiles a block streams:
//   dkdv: K [64][dk+8], V [64][dv+8] resident; Q [2][BQ][dk+8], dO [2][BQ][dv+8], lse/D [2][BQ].
//         BQ = 64 (dk <= 128) or 32 (dk = 192, to keep dK + dV + Sᵀ + dPᵀ in registers).
//         (64,64): 55 KiB, (128,128): 103 KiB, (192,128): 85 KiB.
//   dq:   Q [64][dk+8], dO [64][dv+8] resident; K [2][64][dk+8], V [2][64][dv+8].
//         (64,64): 54 KiB, (128,128): 102 KiB, (192,128): 126 KiB.
//   lse:  Q [64][dk+8], K [2][64][dk+8].
// The A-operand fragments of the resident tiles (K, V in dkdv; Q, dO in dq) stay in registers for
// the narrow widths and are re-read with ldmatrix per tile for the wide ones.
//
// On compute 9.0, the three passes can run on the warpgroup-MMA kernels of
// flash_attention_backward_sm90a.cu instead ((64, 64) and (128, 128); choose_kernel below,
// REFINERY_ATTN_BWD_KERNEL): same plan, workspace layout and split reduction.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/flash_attention_backward.hpp"
#include "engine/backend/cuda/flash_attention_backward_internal.cuh"
#include "engine/backend/cuda/mma_ptx.cuh"
#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

namespace {

using bf16 = __nv_bfloat16;
using namespace ptx;
using flash_bwd_detail::BwdParams;
using flash_bwd_detail::online_lse_step;
using flash_bwd_detail::store_bf16_pair;
using flash_bwd_detail::store_key_row;
using flash_bwd_detail::store_quad_lse2;
using flash_bwd_detail::warp_dsum;

constexpr int kTile = 64;  // keys per dkdv block, queries per dq/lse block, keys per dq/lse step
constexpr int kWarps = 4;  // each warp owns 16 rows (keys in dkdv, queries in dq/lse)
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;            // bf16 elements appended to every shared row (16 bytes)
constexpr int64_t kMinBlocks = 512;  // dkdv splits the query heads until it has this many blocks

// exp2_approx, pack_bf16: mma_ptx.cuh.

// Rows [0, ROWS) x WIDTH of a tile from global (row r at src + r * row_stride) into shared rows
// of WIDTH + kPad elements; rows >= rows_valid become zeros. `src` (row 0) must be readable.
template <int ROWS, int WIDTH>
__device__ __forceinline__ void load_rows_async(bf16* dst, const bf16* src, int64_t row_stride,
                                                int rows_valid) {
  constexpr int kChunksPerRow = WIDTH / 8;
  constexpr int kChunks = ROWS * kChunksPerRow;
  static_assert(kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int chunk = i * kThreads + static_cast<int>(threadIdx.x);
    const int row = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * 8;
    const bool valid = row < rows_valid;
    const bf16* from = valid ? src + row * row_stride + col : src;
    cp_async_16(shared_address(dst + row * (WIDTH + kPad) + col), from, valid);
  }
}

// COUNT floats (a multiple of 4, always in bounds: the workspace rows are padded) by the threads
// [first, first + COUNT / 4).
template <int COUNT>
__device__ __forceinline__ void load_floats_async(float* dst, const float* src, int first) {
  const int i = static_cast<int>(threadIdx.x) - first;
  if (i >= 0 && i < COUNT / 4) cp_async_16(shared_address(dst + 4 * i), src + 4 * i, true);
}

// ldmatrix lane addressing (see flash_attention.cu for the derivation), for a warp's 16-row
// A operand at shared row `a_row0` and for B operands:
//   A (16 rows x 16 cols, row-major tile):           row a_row0 + L % 16, col 8 (L / 16)
//   B from rows of a [n][k] tile (B = tileᵀ, no .trans): row L % 8 + 8 (L / 16), col 8 ((L / 8) % 2)
//     -> {b0, b1} of n-tile 0 and of n-tile 1 (8 rows each)
//   B from a [k][n] tile (B = tile, .trans):          row L % 8 + 8 ((L / 8) % 2), col 8 (L / 16)
//     -> {b0, b1} of n-tile 0 and of n-tile 1 (8 columns each)
struct LaneAddressing {
  int a_row, a_col, b_row, b_col, t_row, t_col;
  __device__ explicit LaneAddressing(int warp, int lane)
      : a_row(warp * 16 + (lane & 15)),
        a_col((lane >> 4) * 8),
        b_row((lane & 7) + ((lane >> 4) << 3)),
        b_col(((lane >> 3) & 1) * 8),
        t_row((lane & 7) + (((lane >> 3) & 1) << 3)),
        t_col((lane >> 4) * 8) {}
};

// acc[16 x 8·N_TILES] += A (16 x 16·K_STEPS, fragments from `a_frag` or ldmatrix of `a_tile`)
// · Bᵀ where B's rows are the shared rows of `b_tile` (N_TILES·8 rows, K_STEPS·16 cols).
template <int K_STEPS, int N_TILES, bool A_IN_REGS, int A_ROWS>
__device__ __forceinline__ void mma_a_bt(float (&acc)[N_TILES][4], const uint32_t (&a_frag)[A_ROWS][4],
                                         const bf16* a_tile, int a_stride, const bf16* b_tile,
                                         int b_stride, const LaneAddressing& l) {
#pragma unroll
  for (int kk = 0; kk < K_STEPS; ++kk) {
    uint32_t a[4];
    if constexpr (A_IN_REGS) {
      a[0] = a_frag[kk][0], a[1] = a_frag[kk][1], a[2] = a_frag[kk][2], a[3] = a_frag[kk][3];
    } else {
      ldmatrix_x4(a, shared_address(a_tile + l.a_row * a_stride + kk * 16 + l.a_col));
    }
#pragma unroll
    for (int nn = 0; nn < N_TILES / 2; ++nn) {
      uint32_t b[4];
      ldmatrix_x4(b, shared_address(b_tile + (nn * 16 + l.b_row) * b_stride + kk * 16 + l.b_col));
      mma_bf16_16x8x16(acc[2 * nn], a, b[0], b[1]);
      mma_bf16_16x8x16(acc[2 * nn + 1], a, b[2], b[3]);
    }
  }
}

// acc[16 x WIDTH] += X (16 x 16·K_STEPS, an f32 accumulator rounded to bf16: the layout of
// accumulator tiles 2kk, 2kk+1 is the A fragment of k-step kk) · B, B = the shared tile
// [16·K_STEPS rows][WIDTH cols] read with ldmatrix .trans.
template <int K_STEPS, int WIDTH>
__device__ __forceinline__ void mma_acc_b(float (&acc)[WIDTH / 8][4], const float (&x)[2 * K_STEPS][4],
                                          const bf16* b_tile, int b_stride, const LaneAddressing& l) {
#pragma unroll
  for (int kk = 0; kk < K_STEPS; ++kk) {
    const uint32_t a[4] = {pack_bf16(x[2 * kk][0], x[2 * kk][1]), pack_bf16(x[2 * kk][2], x[2 * kk][3]),
                           pack_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1]),
                           pack_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3])};
#pragma unroll
    for (int dn = 0; dn < WIDTH / 16; ++dn) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, shared_address(b_tile + (kk * 16 + l.t_row) * b_stride + dn * 16 + l.t_col));
      mma_bf16_16x8x16(acc[2 * dn], a, b[0], b[1]);
      mma_bf16_16x8x16(acc[2 * dn + 1], a, b[2], b[3]);
    }
  }
}

template <int N, int W>
__device__ __forceinline__ void zero(float (&x)[N][W]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < W; ++j) x[i][j] = 0.0f;
}

// ---- pass 1: lse and D ------------------------------------------------------------------------

template <int DK>
struct LseShape {
  static constexpr int kQS = DK + kPad;
  static constexpr size_t kSmemBytes = sizeof(bf16) * 3 * kTile * kQS;
};

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) lse_kernel(const BwdParams p) {
  constexpr int kQS = LseShape<DK>::kQS;
  constexpr int kKElems = kTile * kQS;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const q_s = reinterpret_cast<bf16*>(smem_raw);  // [64][kQS]
  bf16* const k_s = q_s + kKElems;                       // [2][64][kQS]

  const int h = static_cast<int>(blockIdx.x);
  const int m0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * kTile;
  const int kvh = h / p.group;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane >> 2, c = lane & 3;
  const int n_tiles = (min(m0 + kTile, p.t) - 1) / kTile + 1;
  const int64_t q_stride = int64_t{p.heads} * DK, k_stride = int64_t{p.kv_heads} * DK;
  const bf16* const k_head = p.k + int64_t{kvh} * DK;

  load_rows_async<kTile, DK>(q_s, p.q + int64_t{m0} * q_stride + int64_t{h} * DK, q_stride, p.t - m0);
  load_rows_async<kTile, DK>(k_s, k_head, k_stride, p.t);
  cp_async_commit();

  // D for this warp's 16 rows while the copies fly (0 past t).
  const int warp_row0 = m0 + warp * 16;
  for (int r = 0; r < 16; ++r) {
    const int row = warp_row0 + r;
    const float acc = warp_dsum<DV>(p, (int64_t{row} * p.heads + h) * DV, row < p.t, lane);
    if (lane == 0) p.dsum[int64_t{h} * p.t_pad + row] = acc;
  }

  const bool warp_has_rows = warp_row0 < p.t;
  const int rows[2] = {warp_row0 + g, warp_row0 + g + 8};
  const LaneAddressing l(warp, lane);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  uint32_t q_frag[DK / 16][4];

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buffer = tile & 1;
    if (tile + 1 < n_tiles) {
      const int n1 = (tile + 1) * kTile;
      load_rows_async<kTile, DK>(k_s + (buffer ^ 1) * kKElems, k_head + n1 * k_stride, k_stride,
                                 p.t - n1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (tile == 0) {
#pragma unroll
      for (int kk = 0; kk < DK / 16; ++kk)
        ldmatrix_x4(q_frag[kk], shared_address(q_s + l.a_row * kQS + kk * 16 + l.a_col));
    }
    const int n0 = tile * kTile;
    if (warp_has_rows && n0 <= warp_row0 + 15) {
      float s[kTile / 8][4];
      zero(s);
      mma_a_bt<DK / 16, kTile / 8, true>(s, q_frag, q_s, kQS, k_s + buffer * kKElems, kQS, l);
      const bool needs_mask = n0 + kTile - 1 > warp_row0;
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] *= p.scale_log2;
          if (needs_mask && n0 + 8 * j + 2 * c + (e & 1) > rows[e >> 1]) s[j][e] = -INFINITY;
        }
      // Row r of this thread: entries 2r, 2r + 1 of each n-tile.
#pragma unroll
      for (int r = 0; r < 2; ++r)
        online_lse_step<kTile / 8>(row_max[r], row_sum[r],
                                   [&](int j, int e) { return s[j][2 * r + e]; });
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < 2; ++r)
    store_quad_lse2(p.lse + int64_t{h} * p.t_pad + rows[r], row_max[r], row_sum[r], c == 0,
                    rows[r] < p.t);
}

// Pass 1 when the forward handed over its lse (p.lse_in, [H, t], natural log): no Q·Kᵀ, just
// D = rowsum(dout ∘ out) and lse2 = lse · log2 e into the workspace rows ([H, t_pad], zeros from
// t on). One warp per (row, head), lanes over the dv / 2 bf16 pairs (consecutive warps read
// consecutive heads of a row: coalesced).
template <int DV>
__global__ void dsum_kernel(const BwdParams p) {
  const int64_t warp = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (warp >= int64_t{p.t_pad} * p.heads) return;
  const int row = static_cast<int>(warp / p.heads), h = static_cast<int>(warp % p.heads);
  const float acc = warp_dsum<DV>(p, warp * DV, row < p.t, lane);  // warp = row · heads + h
  if (lane == 0) {
    const int64_t at = int64_t{h} * p.t_pad + row;
    p.dsum[at] = acc;
    p.lse[at] = row < p.t ? p.lse_in[int64_t{h} * p.t + row] * 1.4426950408889634f : 0.0f;
  }
}

// ---- pass 2: dK and dV per key tile ------------------------------------------------------------

template <int DK, int DV, int BQ>
struct DkDvShape {
  static constexpr int kQS = DK + kPad, kVS = DV + kPad;
  static constexpr bool kKVInRegisters = DK + DV <= 128;
  static constexpr int kKElems = kTile * kQS, kVElems = kTile * kVS;
  static constexpr int kQElems = BQ * kQS, kDoElems = BQ * kVS;  // one buffer
  static constexpr size_t kSmemBytes =
      sizeof(bf16) * (kKElems + kVElems + 2 * kQElems + 2 * kDoElems) + sizeof(float) * 4 * BQ;
};

template <int DK, int DV, int BQ>
__global__ void __launch_bounds__(kThreads) dkdv_kernel(const BwdParams p) {
  using Shape = DkDvShape<DK, DV, BQ>;
  constexpr int kQS = Shape::kQS, kVS = Shape::kVS;
  constexpr bool kRegs = Shape::kKVInRegisters;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const k_s = reinterpret_cast<bf16*>(smem_raw);  // [64][kQS]
  bf16* const v_s = k_s + Shape::kKElems;                // [64][kVS]
  bf16* const q_s = v_s + Shape::kVElems;                // [2][BQ][kQS]
  bf16* const do_s = q_s + 2 * Shape::kQElems;           // [2][BQ][kVS]
  float* const lse_s = reinterpret_cast<float*>(do_s + 2 * Shape::kDoElems);  // [2][BQ]
  float* const dsum_s = lse_s + 2 * BQ;                                       // [2][BQ]

  const int kvh = static_cast<int>(blockIdx.x) / p.split, part = static_cast<int>(blockIdx.x) % p.split;
  const int n0 = static_cast<int>(blockIdx.y) * kTile;
  const int h_first = kvh * p.group + part * p.heads_per_split;
  const int q_first = n0 / BQ, per_head = (p.t + BQ - 1) / BQ - q_first;
  const int n_iter = p.heads_per_split * per_head;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane >> 2, c = lane & 3;
  const int64_t q_stride = int64_t{p.heads} * DK, do_stride = int64_t{p.heads} * DV;
  const int64_t k_stride = int64_t{p.kv_heads} * DK, v_stride = int64_t{p.kv_heads} * DV;

  auto prefetch = [&](int it, int buffer) {
    const int h = h_first + it / per_head, m0 = (q_first + it % per_head) * BQ;
    load_rows_async<BQ, DK>(q_s + buffer * Shape::kQElems,
                            p.q + int64_t{m0} * q_stride + int64_t{h} * DK, q_stride, p.t - m0);
    load_rows_async<BQ, DV>(do_s + buffer * Shape::kDoElems,
                            p.dout + int64_t{m0} * do_stride + int64_t{h} * DV, do_stride, p.t - m0);
    load_floats_async<BQ>(lse_s + buffer * BQ, p.lse + int64_t{h} * p.t_pad + m0, 0);
    load_floats_async<BQ>(dsum_s + buffer * BQ, p.dsum + int64_t{h} * p.t_pad + m0, 32);
  };
  load_rows_async<kTile, DK>(k_s, p.k + int64_t{n0} * k_stride + int64_t{kvh} * DK, k_stride, p.t - n0);
  load_rows_async<kTile, DV>(v_s, p.v + int64_t{n0} * v_stride + int64_t{kvh} * DV, v_stride, p.t - n0);
  prefetch(0, 0);
  cp_async_commit();

  // This warp's keys: warp_key0 + g (fragment registers 0, 1) and + g + 8 (2, 3).
  const int warp_key0 = n0 + warp * 16;
  const bool warp_has_keys = warp_key0 < p.t;
  const int keys[2] = {warp_key0 + g, warp_key0 + g + 8};
  const LaneAddressing l(warp, lane);
  float dk_acc[DK / 8][4], dv_acc[DV / 8][4];
  zero(dk_acc);
  zero(dv_acc);
  uint32_t k_frag[kRegs ? DK / 16 : 1][4], v_frag[kRegs ? DV / 16 : 1][4];

  for (int it = 0; it < n_iter; ++it) {
    const int buffer = it & 1;
    if (it + 1 < n_iter) {
      prefetch(it + 1, buffer ^ 1);  // released by the trailing barrier of iteration it - 1
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (kRegs) {
      if (it == 0) {
#pragma unroll
        for (int kk = 0; kk < DK / 16; ++kk)
          ldmatrix_x4(k_frag[kk], shared_address(k_s + l.a_row * kQS + kk * 16 + l.a_col));
#pragma unroll
        for (int kk = 0; kk < DV / 16; ++kk)
          ldmatrix_x4(v_frag[kk], shared_address(v_s + l.a_row * kVS + kk * 16 + l.a_col));
      }
    }
    const int m0 = (q_first + it % per_head) * BQ;
    // Warp-uniform skip: every key of the warp is past every query of the tile.
    if (warp_has_keys && warp_key0 <= m0 + BQ - 1) {
      const bf16* const q_tile = q_s + buffer * Shape::kQElems;
      const bf16* const do_tile = do_s + buffer * Shape::kDoElems;
      const float* const lse_tile = lse_s + buffer * BQ;
      const float* const dsum_tile = dsum_s + buffer * BQ;

      // Sᵀ = K·Qᵀ (16 keys x BQ queries); st[j] holds queries m0 + 8j + 2c, +1 of keys g, g+8.
      float st[BQ / 8][4];
      zero(st);
      mma_a_bt<DK / 16, BQ / 8, kRegs>(st, k_frag, k_s, kQS, q_tile, kQS, l);
      // Pᵀ = 2^(x − lse2[query]); 0 where the key is past the query or the query past t.
      const bool needs_mask = warp_key0 + 15 > m0 || m0 + BQ > p.t;
#pragma unroll
      for (int j = 0; j < BQ / 8; ++j) {
        const float2 lse2 = *reinterpret_cast<const float2*>(lse_tile + 8 * j + 2 * c);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int query = m0 + 8 * j + 2 * c + (e & 1);
          float x = fmaf(st[j][e], p.scale_log2, -((e & 1) ? lse2.y : lse2.x));
          if (needs_mask && (keys[e >> 1] > query || query >= p.t)) x = -INFINITY;
          st[j][e] = exp2_approx(x);
        }
      }
      // dV += Pᵀ·dO.
      mma_acc_b<BQ / 16, DV>(dv_acc, st, do_tile, kVS, l);
      // dPᵀ = V·dOᵀ.
      float dpt[BQ / 8][4];
      zero(dpt);
      mma_a_bt<DV / 16, BQ / 8, kRegs>(dpt, v_frag, v_s, kVS, do_tile, kVS, l);
      // dSᵀ = Pᵀ ∘ (dPᵀ − D[query]).
#pragma unroll
      for (int j = 0; j < BQ / 8; ++j) {
        const float2 d = *reinterpret_cast<const float2*>(dsum_tile + 8 * j + 2 * c);
        dpt[j][0] = st[j][0] * (dpt[j][0] - d.x);
        dpt[j][1] = st[j][1] * (dpt[j][1] - d.y);
        dpt[j][2] = st[j][2] * (dpt[j][2] - d.x);
        dpt[j][3] = st[j][3] * (dpt[j][3] - d.y);
      }
      // dK += dSᵀ·Q (scaled at the end).
      mma_acc_b<BQ / 16, DK>(dk_acc, dpt, q_tile, kQS, l);
    }
    __syncthreads();  // every warp is done with `buffer` before it is refilled
  }

  if (!warp_has_keys) return;
  // Key keys[r]: accumulator entries [j][2r + e] (dims 8j + 2c + e); dK scaled here, once.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = keys[r];
    if (key >= p.t) continue;
    store_key_row<DK, DV>(
        p, key, kvh, part, c, [&](int j, int e) { return p.scale * dk_acc[j][2 * r + e]; },
        [&](int j, int e) { return dv_acc[j][2 * r + e]; });
  }
}

// out[i] += Σ_s part[s][i] (s in order; = when overwrite), n elements per split (even), pairs per
// thread.
__global__ void reduce_partials_kernel(const float* part, int64_t n, int split, bool overwrite,
                                       bf16* out) {
  const int64_t pairs = n / 2;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < pairs;
       i += int64_t{gridDim.x} * blockDim.x) {
    float2 acc = reinterpret_cast<const float2*>(part)[i];
    for (int s = 1; s < split; ++s) {
      const float2 x = reinterpret_cast<const float2*>(part + s * n)[i];
      acc.x += x.x;
      acc.y += x.y;
    }
    store_bf16_pair(out + 2 * i, acc.x, acc.y, overwrite);
  }
}

// ---- pass 3: dQ per query tile -----------------------------------------------------------------

template <int DK, int DV>
struct DqShape {
  static constexpr int kQS = DK + kPad, kVS = DV + kPad;
  static constexpr bool kQInRegisters = DK + DV <= 256;
  static constexpr int kQElems = kTile * kQS, kVElems = kTile * kVS;
  static constexpr size_t kSmemBytes = sizeof(bf16) * 3 * (kQElems + kVElems);
};

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads) dq_kernel(const BwdParams p) {
  using Shape = DqShape<DK, DV>;
  constexpr int kQS = Shape::kQS, kVS = Shape::kVS;
  constexpr bool kRegs = Shape::kQInRegisters;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const q_s = reinterpret_cast<bf16*>(smem_raw);  // [64][kQS]
  bf16* const do_s = q_s + Shape::kQElems;               // [64][kVS]
  bf16* const k_s = do_s + Shape::kVElems;               // [2][64][kQS]
  bf16* const v_s = k_s + 2 * Shape::kQElems;            // [2][64][kVS]

  const int h = static_cast<int>(blockIdx.x);
  const int m0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * kTile;
  const int kvh = h / p.group;
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane >> 2, c = lane & 3;
  const int n_tiles = (min(m0 + kTile, p.t) - 1) / kTile + 1;
  const int64_t q_stride = int64_t{p.heads} * DK, do_stride = int64_t{p.heads} * DV;
  const int64_t k_stride = int64_t{p.kv_heads} * DK, v_stride = int64_t{p.kv_heads} * DV;
  const bf16* const k_head = p.k + int64_t{kvh} * DK;
  const bf16* const v_head = p.v + int64_t{kvh} * DV;
  auto load_kv = [&](int tile, int buffer) {
    const int n0 = tile * kTile;
    load_rows_async<kTile, DK>(k_s + buffer * Shape::kQElems, k_head + n0 * k_stride, k_stride, p.t - n0);
    load_rows_async<kTile, DV>(v_s + buffer * Shape::kVElems, v_head + n0 * v_stride, v_stride, p.t - n0);
  };
  load_rows_async<kTile, DK>(q_s, p.q + int64_t{m0} * q_stride + int64_t{h} * DK, q_stride, p.t - m0);
  load_rows_async<kTile, DV>(do_s, p.dout + int64_t{m0} * do_stride + int64_t{h} * DV, do_stride,
                             p.t - m0);
  load_kv(0, 0);
  cp_async_commit();

  const int warp_row0 = m0 + warp * 16;
  const bool warp_has_rows = warp_row0 < p.t;
  const int rows[2] = {warp_row0 + g, warp_row0 + g + 8};
  // Rows past t read the workspace's zero padding (t_pad >= m0 + 64).
  const float lse2[2] = {p.lse[int64_t{h} * p.t_pad + rows[0]], p.lse[int64_t{h} * p.t_pad + rows[1]]};
  const float dsum[2] = {p.dsum[int64_t{h} * p.t_pad + rows[0]], p.dsum[int64_t{h} * p.t_pad + rows[1]]};
  const LaneAddressing l(warp, lane);
  float dq_acc[DK / 8][4];
  zero(dq_acc);
  uint32_t q_frag[kRegs ? DK / 16 : 1][4], do_frag[kRegs ? DV / 16 : 1][4];

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buffer = tile & 1;
    if (tile + 1 < n_tiles) {
      load_kv(tile + 1, buffer ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (kRegs) {
      if (tile == 0) {
#pragma unroll
        for (int kk = 0; kk < DK / 16; ++kk)
          ldmatrix_x4(q_frag[kk], shared_address(q_s + l.a_row * kQS + kk * 16 + l.a_col));
#pragma unroll
        for (int kk = 0; kk < DV / 16; ++kk)
          ldmatrix_x4(do_frag[kk], shared_address(do_s + l.a_row * kVS + kk * 16 + l.a_col));
      }
    }
    const int n0 = tile * kTile;
    if (warp_has_rows && n0 <= warp_row0 + 15) {
      const bf16* const k_tile = k_s + buffer * Shape::kQElems;
      const bf16* const v_tile = v_s + buffer * Shape::kVElems;
      // S = Q·Kᵀ (16 rows x 64 keys); s[j] holds keys n0 + 8j + 2c, +1 of rows g, g+8.
      float s[kTile / 8][4];
      zero(s);
      mma_a_bt<DK / 16, kTile / 8, kRegs>(s, q_frag, q_s, kQS, k_tile, kQS, l);
      const bool needs_mask = n0 + kTile - 1 > warp_row0;
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = fmaf(s[j][e], p.scale_log2, -lse2[e >> 1]);
          if (needs_mask && n0 + 8 * j + 2 * c + (e & 1) > rows[e >> 1]) x = -INFINITY;
          s[j][e] = exp2_approx(x);
        }
      // dP = dO·Vᵀ, then dS = P ∘ (dP − D[row]).
      float dp[kTile / 8][4];
      zero(dp);
      mma_a_bt<DV / 16, kTile / 8, kRegs>(dp, do_frag, do_s, kVS, v_tile, kVS, l);
#pragma unroll
      for (int j = 0; j < kTile / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) dp[j][e] = s[j][e] * (dp[j][e] - dsum[e >> 1]);
      // dQ += dS·K.
      mma_acc_b<kTile / 16, DK>(dq_acc, dp, k_tile, kQS, l);
    }
    __syncthreads();
  }

  if (!warp_has_rows) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= p.t) continue;
    bf16* const row = p.dq + (int64_t{rows[r]} * p.heads + h) * DK;
#pragma unroll
    for (int j = 0; j < DK / 8; ++j)
      store_bf16_pair(row + 8 * j + 2 * c, p.scale * dq_acc[j][2 * r],
                      p.scale * dq_acc[j][2 * r + 1], p.overwrite);
  }
}

// ---- host side ---------------------------------------------------------------------------------

struct Plan {
  int64_t t_pad, key_blocks, split;
  int64_t lse_floats, part_dk_floats, part_dv_floats;  // each a multiple of 4
};

Plan make_plan(const FlashAttentionBackwardArgs& a) {
  Plan plan{};
  plan.t_pad = (a.t + kTile - 1) / kTile * kTile;
  plan.key_blocks = plan.t_pad / kTile;
  const int64_t group = a.heads / a.kv_heads;
  // The smallest split of the group's query heads that gives kMinBlocks dkdv blocks (the whole
  // group at most): fixed by the sizes alone, so results do not depend on the device.
  plan.split = group;
  for (int64_t s = 1; s <= group; ++s)
    if (group % s == 0 && plan.key_blocks * a.kv_heads * s >= kMinBlocks) {
      plan.split = s;
      break;
    }
  plan.lse_floats = 2 * a.heads * plan.t_pad;
  const bool parts = plan.split > 1;
  plan.part_dk_floats = parts && a.d_k != nullptr ? plan.split * a.t * a.kv_heads * a.dk : 0;
  plan.part_dv_floats = parts && a.d_v != nullptr ? plan.split * a.t * a.kv_heads * a.dv : 0;
  return plan;
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  // Above 48 KiB of dynamic shared memory needs an explicit opt-in (per kernel, cheap to repeat).
  REFINERY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
}

// The lse/D, dK/dV and dQ kernels: mma.sync (this file, every supported width) or wgmma
// (flash_attention_backward_sm90a.cu: compute 9.0, (64, 64) and (128, 128)).
enum class BwdKernel { kMma, kWgmma };

// The kernel used when REFINERY_ATTN_BWD_KERNEL is unset or "auto": the wgmma kernels on compute
// 9.0 (they passed the GPU tests on an H100, 2026-11-27: 174 vs 128 TFLOP/s at GQA 32/4 × 64,
// 222 vs 141 at 32/8 × 128), the mma.sync kernels elsewhere.
constexpr bool kWgmmaBackwardByDefault = true;

// REFINERY_ATTN_BWD_KERNEL (read per call, ~100 ns next to the launches): unset, "" or "auto" (the
// default above, where the device and the widths allow it), "mma", "wgmma" (a user error where the
// device or the widths don't allow it); any other value is a user error.
BwdKernel choose_kernel(int64_t dk, int64_t dv) {
  const char* v = std::getenv("REFINERY_ATTN_BWD_KERNEL");
  const bool automatic = v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0;
  if (automatic) {
    const bool wgmma = kWgmmaBackwardByDefault && flash_bwd_detail::wgmma_backward_supports(dk, dv) &&
                       flash_bwd_detail::wgmma_backward_available();
    return wgmma ? BwdKernel::kWgmma : BwdKernel::kMma;
  }
  if (std::strcmp(v, "mma") == 0) return BwdKernel::kMma;
  if (std::strcmp(v, "wgmma") == 0) {
    if (!flash_bwd_detail::wgmma_backward_available())
      throw_user_error("REFINERY_ATTN_BWD_KERNEL=wgmma: the Hopper attention backward kernels need a "
                       "compute 9.0 GPU (H100/H200); unset REFINERY_ATTN_BWD_KERNEL or set it to mma");
    if (!flash_bwd_detail::wgmma_backward_supports(dk, dv))
      throw_user_error("REFINERY_ATTN_BWD_KERNEL=wgmma: the Hopper attention backward kernels do not "
                       "support head widths dk ", dk, ", dv ", dv, " (they have (64, 64) and "
                       "(128, 128)); unset REFINERY_ATTN_BWD_KERNEL or set it to mma");
    return BwdKernel::kWgmma;
  }
  throw_user_error("environment variable REFINERY_ATTN_BWD_KERNEL is \"", v,
                   "\"; expected \"auto\", \"mma\" (the mma.sync backward kernels) or \"wgmma\" (the "
                   "Hopper kernels); unset it for the default");
}

template <int DK, int DV>
void run(const BwdParams& p, const Plan& plan, BwdKernel kernel, cudaStream_t stream) {
  constexpr int kBQ = DK > 128 ? 32 : 64;
  const unsigned tiles = static_cast<unsigned>(plan.key_blocks);
  if (p.lse_in != nullptr) {
    const int64_t threads = int64_t{32} * p.t_pad * p.heads;
    dsum_kernel<DV><<<static_cast<unsigned>((threads + 255) / 256), 256, 0, stream>>>(p);
    REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (D)");
  } else if (kernel == BwdKernel::kWgmma) {
    flash_bwd_detail::wgmma_backward_lse(p, DK, stream);
  } else {
    constexpr size_t kSmem = LseShape<DK>::kSmemBytes;
    set_smem(lse_kernel<DK, DV>, kSmem);
    lse_kernel<DK, DV><<<dim3(static_cast<unsigned>(p.heads), tiles), kThreads, kSmem, stream>>>(p);
    REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (lse)");
  }
  if (p.dk != nullptr || p.dv != nullptr) {
    if (kernel == BwdKernel::kWgmma) {
      flash_bwd_detail::wgmma_backward_dkdv(p, DK, stream);
    } else {
      constexpr size_t kSmem = DkDvShape<DK, DV, kBQ>::kSmemBytes;
      set_smem(dkdv_kernel<DK, DV, kBQ>, kSmem);
      const dim3 grid(static_cast<unsigned>(p.kv_heads * p.split), tiles);
      dkdv_kernel<DK, DV, kBQ><<<grid, kThreads, kSmem, stream>>>(p);
      REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (dk, dv)");
    }
    if (p.split > 1) {
      const int64_t n_k = int64_t{p.t} * p.kv_heads * DK, n_v = int64_t{p.t} * p.kv_heads * DV;
      auto blocks = [](int64_t n) {
        return static_cast<unsigned>(std::min<int64_t>((n / 2 + 255) / 256, 4096));
      };
      if (p.dk != nullptr) {
        reduce_partials_kernel<<<blocks(n_k), 256, 0, stream>>>(p.dk_part, n_k, p.split,
                                                                p.overwrite, p.dk);
        REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (dk reduce)");
      }
      if (p.dv != nullptr) {
        reduce_partials_kernel<<<blocks(n_v), 256, 0, stream>>>(p.dv_part, n_v, p.split,
                                                                p.overwrite, p.dv);
        REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (dv reduce)");
      }
    }
  }
  if (p.dq != nullptr && kernel == BwdKernel::kWgmma) {
    flash_bwd_detail::wgmma_backward_dq(p, DK, stream);
  } else if (p.dq != nullptr) {
    constexpr size_t kSmem = DqShape<DK, DV>::kSmemBytes;
    set_smem(dq_kernel<DK, DV>, kSmem);
    dq_kernel<DK, DV><<<dim3(static_cast<unsigned>(p.heads), tiles), kThreads, kSmem, stream>>>(p);
    REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (dq)");
  }
}

void check_sizes(const FlashAttentionBackwardArgs& a) {
  REFINERY_CHECK(flash_attention_backward_supports(a.dk, a.dv), "flash_attention_backward: head widths dk ",
                 a.dk, ", dv ", a.dv, " are not supported (ask flash_attention_backward_supports first)");
  REFINERY_CHECK(a.t >= 0 && a.heads > 0 && a.kv_heads > 0 && a.heads % a.kv_heads == 0,
                 "flash_attention_backward: inconsistent sizes t ", a.t, ", heads ", a.heads,
                 ", kv_heads ", a.kv_heads);
  REFINERY_CHECK(a.t <= int64_t{65535} * kTile && a.heads <= 65535,
                 "flash_attention_backward: ", a.t, " tokens or ", a.heads,
                 " heads exceed the grid limits");
}

}  // namespace

bool flash_attention_backward_supports(int64_t dk, int64_t dv) {
  return (dk == 64 && dv == 64) || (dk == 128 && dv == 128) || (dk == 192 && dv == 128);
}

int64_t flash_attention_backward_workspace_bytes(const FlashAttentionBackwardArgs& a) {
  check_sizes(a);
  const Plan plan = make_plan(a);
  return int64_t{sizeof(float)} * (plan.lse_floats + plan.part_dk_floats + plan.part_dv_floats);
}

void flash_attention_backward_bf16(const FlashAttentionBackwardArgs& a, void* stream) {
  check_sizes(a);
  if (a.t == 0 || (a.d_q == nullptr && a.d_k == nullptr && a.d_v == nullptr)) return;
  REFINERY_CHECK(a.workspace != nullptr && aligned16(a.workspace),
                 "flash_attention_backward: a 16-byte aligned workspace of "
                 "flash_attention_backward_workspace_bytes() bytes is required");
  for (const void* ptr : {a.q, a.k, a.v, a.out, a.dout, static_cast<const void*>(a.d_q),
                          static_cast<const void*>(a.d_k), static_cast<const void*>(a.d_v)})
    REFINERY_CHECK(aligned16(ptr), "flash_attention_backward: tensors must be 16-byte aligned (cp.async)");
  const Plan plan = make_plan(a);
  float* const ws = static_cast<float*>(a.workspace);
  BwdParams p{};
  p.q = static_cast<const bf16*>(a.q);
  p.k = static_cast<const bf16*>(a.k);
  p.v = static_cast<const bf16*>(a.v);
  p.out = static_cast<const bf16*>(a.out);
  p.dout = static_cast<const bf16*>(a.dout);
  p.dq = static_cast<bf16*>(a.d_q);
  p.dk = static_cast<bf16*>(a.d_k);
  p.dv = static_cast<bf16*>(a.d_v);
  p.lse = ws;
  p.dsum = ws + a.heads * plan.t_pad;
  p.dk_part = plan.part_dk_floats > 0 ? ws + plan.lse_floats : nullptr;
  p.dv_part = plan.part_dv_floats > 0 ? ws + plan.lse_floats + plan.part_dk_floats : nullptr;
  p.t = static_cast<int>(a.t);
  p.t_pad = static_cast<int>(plan.t_pad);
  p.heads = static_cast<int>(a.heads);
  p.kv_heads = static_cast<int>(a.kv_heads);
  p.group = static_cast<int>(a.heads / a.kv_heads);
  p.split = static_cast<int>(plan.split);
  p.heads_per_split = p.group / p.split;
  p.scale = a.scale;
  p.scale_log2 = a.scale * 1.4426950408889634f;
  p.lse_in = a.lse;
  p.overwrite = a.overwrite;
  const BwdKernel kernel = choose_kernel(a.dk, a.dv);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dk == 64) return run<64, 64>(p, plan, kernel, st);
  if (a.dk == 128) return run<128, 128>(p, plan, kernel, st);
  return run<192, 128>(p, plan, kernel, st);
}

}  // namespace refinery::backend::cuda
