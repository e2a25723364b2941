// Causal flash attention backward on Hopper (sm_90a): the three passes of
// flash_attention_backward.cu (lse/D, dK/dV, dQ) on warpgroup MMAs (wgmma.mma_async). The plan,
// the workspace layout and the reduction of the group-split partials stay in
// flash_attention_backward.cu, which chooses between these kernels and its mma.sync ones
// (REFINERY_ATTN_BWD_KERNEL).
// Compiled for sm_90a only (CMakeLists.txt: *_sm90a.cu); the launcher refuses other devices.
// Same algorithm and same determinism as the mma.sync kernels (every gradient element is produced
// by one block, fixed-order sums, no atomics); results differ from them only by f32 summation
// order. Scores in log2 units: x = q·k·scale·log2 e, P = 2^(x − lse2) (lse2, D from pass 1).
//
// Sizes: q [T, H, dk], k [T, KV, dk], v [T, KV, dv], dout [T, H, dv]; (dk, dv) = (64, 64) or
// (128, 128). All kernels: 256 threads = two warpgroups (WG), each owning 64 rows of the block,
// warp q of a WG rows 16q..16q+15 of those (accumulator layout: wgmma_ptx.cuh).
//
// lse/D pass (lse_wgmma_kernel): block = (head, 128 query rows), S = Q·Kᵀ per key tile of 128
// (m64n128k16, both K-major) and the online row max / sum of 2^x: lse2 = m + log2 Σ 2^(x − m);
// D = rowsum(dout ∘ out). MUFU-bound (one exp2 per score), two blocks per SM.
//
// dK/dV pass (dkdv_wgmma_kernel), block = (128 keys n0..n0+127, kv head, group split), WG w owns
// keys n0 + 64w .. +63. The block walks (query head of its split, query tile of 64 rows m0 >= n0
// rounded down to 64) in order; per step and WG, with the key as the M dimension ("Sᵀ" form, so
// that Pᵀ and dSᵀ come out of the accumulators as the A operands of the next products):
//   Sᵀ  = K·Qᵀ     m64n64k16 x dk/16   A = K (keys x dk, K-major), B = Q (queries x dk, K-major)
//   dPᵀ = V·dOᵀ    m64n64k16 x dv/16   A = V, B = dO, both K-major
//                  (for (64, 64) A = K, V from registers: fragments loaded once per block)
//   Pᵀ  = 2^(Sᵀ·scale·log2 e − lse2[query]), dSᵀ = Pᵀ ∘ (dPᵀ − D[query])    (f32, registers)
//   dV += Pᵀ·dO    m64n{dv}k16 x 4     A = Pᵀ from REGISTERS (bf16), B = dO MN-major (the query
//                                      rows are k, dv contiguous: imm-trans-b = 1, no copy)
//   dK += dSᵀ·Q    m64n{dk}k16 x 4     A = dSᵀ from registers, B = Q MN-major
// dK is scaled once at the end; with one split the block adds dK/dV into the bf16 gradients,
// otherwise writes the f32 partials [split, T, KV, d] (reduced by flash_attention_backward.cu).
//
// dQ pass (dq_wgmma_kernel), block = (head, 128 query rows m0..m0+127), WG w owns rows
// m0 + 64w .. +63 and walks the key tiles of 64 up to the block's diagonal:
//   S  = Q·Kᵀ      m64n64k16 x dk/16   A = Q, B = K, both K-major
//   dP = dO·Vᵀ     m64n64k16 x dv/16   A = dO, B = V, both K-major
//                  (for (128, 128) A = Q, dO from registers: fragments loaded once per block)
//   P = 2^(S·scale·log2 e − lse2[row]), dS = P ∘ (dP − D[row])
//   dQ += dS·K     m64n{dk}k16 x 4     A = dS from registers, B = K MN-major (key rows are k)
// and adds scale·dQ into the bf16 gradient.
//
// Shared memory: every operand is stored as "panels" of R rows x 128 bytes (64 bf16 columns),
// 128-byte swizzled (chunk c of row r at r*128 + ((c ^ r%8) * 16), wgmma_ptx.cuh), panel p =
// columns 64p..64p+63, all panel bases 1024-byte aligned; the same layout serves as a K-major
// operand (rows = M or N, make_descriptor; k16 step kk at panel kk/4, byte (kk%4)*32) and as an
// MN-major B operand (rows = K, make_descriptor_mn with LBO = the panel size; k16 step kk at byte
// kk*16*128). cp.async from all 256 threads; rows past T are zero-filled (masked keys/queries meet
// zeros, never stale NaN/Inf).
//   dkdv: K [dk/64 panels x 128 rows], V [dv/64 x 128]; Q [2 stages][dk/64 x 64 rows],
//         dO [2][dv/64 x 64], lse2/D [2][64] f32 each. (64,64): 66 KiB, (128,128): 130 KiB.
//   dq:   Q [dk/64 x 128 rows], dO [dv/64 x 128]; K [2][dk/64 x 64], V [2][dv/64 x 64].
//         (64,64): 65 KiB, (128,128): 129 KiB. lse2/D per row in registers.
// Registers (ptxas, CUDA 13.0, no spills): dkdv 212 (64,64) / 240 (128,128), one block per SM;
// dq 124 (two blocks per SM) / 222; lse 116 / 122 (two blocks per SM).
// Pipeline (dkdv and dq; lse the same with one wgmma group per step), two stages of the streamed
// tiles: at the top of step j the block
// waits for its cp.async group (step j's tiles), fences the async proxy (cp.async writes through
// the generic proxy, wgmma reads through the async proxy) and synchronizes; then it starts the
// copies of step j+1 into the other stage (step j-1's, whose MMAs every thread waited for before
// the barrier) and issues step j's S and dP as two wgmma groups. P's exponentials overlap dP; in
// dkdv dV is issued as soon as Pᵀ is packed and overlaps the dS work, then dK; in dq dQ. The
// step's last products are waited for at its end (keeping groups in flight across the loop's back
// edge made ptxas serialize the wgmma, C7515). The two WGs (and, where registers allow, two
// blocks per SM) overlap each other's MMAs and element-wise work.
// Causal work skipped per block only (query tiles below n0, key tiles past the block's last row);
// a WG whose rows are all masked in a step (the diagonal's first/last step) computes zeros, which
// keeps every wgmma outside branches (ptxas serializes wgmma in divergent code).
// Grid: dkdv x = kv head · split + part, y = key block (the longest first); dq x = head, y = query
// block in reverse order (the longest first).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/flash_attention_backward_internal.cuh"
#include "engine/backend/cuda/grouped_gemm.hpp"
#include "engine/backend/cuda/mma_ptx.cuh"
#include "engine/backend/cuda/wgmma_ptx.cuh"

namespace refinery::backend::cuda::flash_bwd_detail {

namespace {

constexpr int kThreads = 256;       // two warpgroups
constexpr int kBlockKeys = 128;     // dkdv: keys per block (64 per WG)
constexpr int kQueryTile = 64;      // dkdv: queries per step (the N of Sᵀ, the K of dV, dK)
constexpr int kBlockQueries = 128;  // dq: query rows per block (64 per WG)
constexpr int kKeyTile = 64;        // dq: keys per step (the N of S, the K of dQ)
constexpr int kSteps16 = 64 / 16;   // k16 steps of the register-A products (64 queries or keys)
constexpr int kStages = 2;          // buffers of the streamed tiles (Q/dO in dkdv, K/V in dq)
constexpr int kWideBytes = 128 * 128;   // a panel of 128 rows
constexpr int kNarrowBytes = 64 * 128;  // a panel of 64 rows

template <int DK, int DV>
struct DkDvWgmmaShape {
  static_assert((DK == 64 || DK == 128) && (DV == 64 || DV == 128), "one or two panels per operand");
  static constexpr int kKBytes = DK / 64 * kWideBytes, kVBytes = DV / 64 * kWideBytes;
  static constexpr int kQStageBytes = DK / 64 * kNarrowBytes, kDoStageBytes = DV / 64 * kNarrowBytes;
  static constexpr int kFloatBytes = 2 * kStages * kQueryTile * 4;  // lse2 [2][64], then D [2][64]
  // + 1024: the dynamic shared window is only 16-byte aligned; the kernel rounds its base up.
  static constexpr size_t kSmemBytes =
      size_t{kKBytes} + kVBytes + kStages * (kQStageBytes + kDoStageBytes) + kFloatBytes + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "over the H100's 227 KiB of shared memory per block");
};

template <int DK>
struct LseWgmmaShape {
  static_assert(DK == 64 || DK == 128, "one or two panels per operand");
  static constexpr int kQBytes = DK / 64 * kWideBytes, kKStageBytes = DK / 64 * kWideBytes;
  static constexpr size_t kSmemBytes = size_t{kQBytes} + kStages * kKStageBytes + 1024;
};

template <int DK, int DV>
struct DqWgmmaShape {
  static_assert((DK == 64 || DK == 128) && (DV == 64 || DV == 128), "one or two panels per operand");
  static constexpr int kQBytes = DK / 64 * kWideBytes, kDoBytes = DV / 64 * kWideBytes;
  static constexpr int kKStageBytes = DK / 64 * kNarrowBytes, kVStageBytes = DV / 64 * kNarrowBytes;
  static constexpr size_t kSmemBytes =
      size_t{kQBytes} + kDoBytes + kStages * (kKStageBytes + kVStageBytes) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "over the H100's 227 KiB of shared memory per block");
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

using namespace ptx;

// Rows [0, ROWS) x WIDTH of a tile from global (row r at src + r * row_stride; `src` readable)
// into WIDTH/64 swizzled panels of ROWS rows at shared address dst (panel p at dst + p·ROWS·128,
// columns 64p..64p+63); rows >= rows_valid are zero-filled. Thread T copies 16-byte chunk
// c = T % 8 of rows T / 8 + 32i: 8 consecutive threads read one 128-byte row segment (coalesced)
// and write 8 distinct 16-byte slots; rows 32i + T/8 share row % 8, so the swizzled slot
// (c ^ row % 8) is fixed per thread (as flash_attention_sm90a.cu's load_tile).
template <int ROWS, int WIDTH>
__device__ __forceinline__ void load_tile(uint32_t dst, const bf16* src, int64_t row_stride,
                                          int rows_valid) {
  static_assert(ROWS % 32 == 0 && WIDTH % 64 == 0, "32 rows per pass, whole panels");
  constexpr int kPanelBytes = ROWS * 128;
  const int t = static_cast<int>(threadIdx.x);
  const int row = t >> 3, c = t & 7;
  const uint32_t dst_t = dst + row * 128 + ((c ^ (row & 7)) << 4);
  const bf16* const src_t = src + row * row_stride + c * 8;
#pragma unroll
  for (int i = 0; i < ROWS / 32; ++i) {
    const bool valid = row + 32 * i < rows_valid;
#pragma unroll
    for (int panel = 0; panel < WIDTH / 64; ++panel) {
      const bf16* from = valid ? src_t + 32 * i * row_stride + panel * 64 : src;
      cp_async_16(dst_t + panel * kPanelBytes + i * 32 * 128, from, valid);
    }
  }
}

// Descriptor offset (16-byte units) of k16 step kk of a K-major operand stored as panels of
// PANEL_BYTES: panel kk / 4, 32 bytes per step inside it.
template <int PANEL_BYTES>
__device__ __forceinline__ uint64_t k_major_step(int kk) {
  return static_cast<uint64_t>(((kk >> 2) * PANEL_BYTES + (kk & 3) * 32) >> 4);
}
// Descriptor offset of k16 step kk of an MN-major operand (k = rows): 16 rows of 128 bytes.
__device__ __forceinline__ uint64_t mn_major_step(int kk) {
  return static_cast<uint64_t>((kk * 16 * 128) >> 4);
}

// The A fragments of the next product from a 64 x 64 f32 accumulator (k = its columns):
// accumulator blocks 2kk, 2kk+1 are columns 16kk..16kk+15 (wgmma_ptx.cuh), rounded to bf16.
__device__ __forceinline__ void pack_fragments(uint32_t (&f)[kSteps16][4], const float (&x)[32]) {
#pragma unroll
  for (int kk = 0; kk < kSteps16; ++kk) {
    f[kk][0] = pack_bf16(x[8 * kk + 0], x[8 * kk + 1]);  // row g,   cols 16kk + 2c, +1
    f[kk][1] = pack_bf16(x[8 * kk + 2], x[8 * kk + 3]);  // row g+8, cols 16kk + 2c, +1
    f[kk][2] = pack_bf16(x[8 * kk + 4], x[8 * kk + 5]);  // row g,   cols 16kk + 8 + 2c, +1
    f[kk][3] = pack_bf16(x[8 * kk + 6], x[8 * kk + 7]);  // row g+8, cols 16kk + 8 + 2c, +1
  }
}

// ldmatrix.x4 address of lane `lane` for the A fragment (wgmma_ptx.cuh) of k16 step kk of the 16
// rows row0..row0+15 of an operand stored as swizzled panels of 128 rows (panel kk / 4 at
// panels + (kk / 4) * kWideBytes): lane L gives row row0 + L % 16, 16-byte chunk 2 (kk % 4) + L / 16
// (matrices: rows 0-7 / 8-15 of cols 0-7, then of cols 8-15 = a[0], a[1], a[2], a[3]).
__device__ __forceinline__ uint32_t fragment_address(uint32_t panels, int row0, int kk, int lane) {
  const int row = row0 + (lane & 15), chunk = 2 * (kk & 3) + (lane >> 4);
  return panels + (kk >> 2) * kWideBytes + row * 128 + ((chunk ^ (row & 7)) << 4);
}

// The A fragments of k16 steps 0..STEPS-1 of this warp's 16 rows row0..row0+15 of a resident
// operand (swizzled panels of 128 rows at `panels`), for a whole block's products.
template <int STEPS, int FRAGS>
__device__ __forceinline__ void load_fragments(uint32_t (&f)[FRAGS][4], uint32_t panels, int row0,
                                               int lane) {
  static_assert(FRAGS >= STEPS, "one fragment per k16 step");
#pragma unroll
  for (int kk = 0; kk < STEPS; ++kk) ldmatrix_x4(f[kk], fragment_address(panels, row0, kk, lane));
}

// D[64 x WIDTH] += A (registers, 64 x 16) · B (MN-major panels, 16 x WIDTH).
template <int WIDTH>
__device__ __forceinline__ void mma_rs(float (&d)[WIDTH / 2], const uint32_t (&a)[4], uint64_t desc_b) {
  if constexpr (WIDTH == 128)
    wgmma_m64n128k16_rs_tb(d, a, desc_b);
  else
    wgmma_m64n64k16_rs_tb(d, a, desc_b);
}

// D[64 x 64] = A (64 x 16·STEPS) · Bᵀ as one wgmma group (committed here; the first k16 step
// overwrites D): the Sᵀ / dPᵀ products of dkdv and the S / dP products of dq. A is the WG's 64
// rows, from registers (a_frag: STEPS ldmatrix fragments, A_IN_REGISTERS) or from shared memory
// (a_desc: K-major panels of 128 rows, the WG's rows at their offset); B (b_desc) is a streamed
// tile of 64 rows, K-major panels of 64 rows. FRAGS: the fragment array's extent (1 when unused).
template <int STEPS, bool A_IN_REGISTERS, int FRAGS>
__device__ __forceinline__ void product_64x64(float (&d)[32], const uint32_t (&a_frag)[FRAGS][4],
                                              uint64_t a_desc, uint64_t b_desc) {
  static_assert(!A_IN_REGISTERS || FRAGS >= STEPS, "one fragment per k16 step");
  if constexpr (A_IN_REGISTERS) {
#pragma unroll
    for (int kk = 0; kk < STEPS; ++kk)
      wgmma_m64n64k16_rs(d, a_frag[kk], b_desc + k_major_step<kNarrowBytes>(kk), kk == 0 ? 0 : 1);
  } else {
#pragma unroll
    for (int kk = 0; kk < STEPS; ++kk)
      wgmma_m64n64k16_ss(d, a_desc + k_major_step<kWideBytes>(kk),
                         b_desc + k_major_step<kNarrowBytes>(kk), kk == 0 ? 0 : 1);
  }
  wgmma_commit();
}

template <int N>
__device__ __forceinline__ void zero(float (&x)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) x[i] = 0.0f;
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ---- lse2 and D per query block ----------------------------------------------------------------

// Block = (head, 128 query rows m0..m0+127), WG w owns rows m0 + 64w .. +63 and walks the key
// tiles of 128 up to the block's diagonal: S = Q·Kᵀ (m64n128k16 x dk/16, Q and K K-major, as in
// flash_attention_sm90a.cu), then the online row max / sum of 2^x in f32. Writes lse2 = m + log2 Σ
// and D = rowsum(dout ∘ out) for the block's rows below t_pad (zeros from t on: the padding the
// other passes read). Smem: Q [dk/64 x 128 rows], K [2][dk/64 x 128]; (64): 49 KiB, (128): 97 KiB.
template <int DK, int DV>
__global__ void __launch_bounds__(kThreads, 2) lse_wgmma_kernel(const BwdParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Shape = LseWgmmaShape<DK>;
  constexpr int kTileKeys = 128;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t base = (shared_address(smem_raw) + 1023u) & ~1023u;
  const uint32_t q_s = base;                   // [dk/64][128 rows]
  const uint32_t k_s = q_s + Shape::kQBytes;   // stage b at + b * kKStageBytes

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wg = tid / 128, wq = warp % 4;
  const int g = lane >> 2, c = lane & 3;

  const int h = static_cast<int>(blockIdx.x);
  const int m0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * kBlockQueries;
  const int kvh = h / p.group;
  const int n_tiles = (min(m0 + kBlockQueries, p.t) - 1) / kTileKeys + 1;
  const int64_t q_stride = int64_t{p.heads} * DK, k_stride = int64_t{p.kv_heads} * DK;
  const bf16* const k_head = p.k + int64_t{kvh} * DK;
  const auto load_k = [&](int j) {
    const int n0 = j * kTileKeys;
    load_tile<kTileKeys, DK>(k_s + (j % kStages) * Shape::kKStageBytes, k_head + n0 * k_stride,
                             k_stride, p.t - n0);
  };
  load_tile<kBlockQueries, DK>(q_s, p.q + int64_t{m0} * q_stride + int64_t{h} * DK, q_stride, p.t - m0);
  load_k(0);
  cp_async_commit();

  // D while the copies fly: warp w reduces rows m0 + 16w .. +15 (0 from t on, none from t_pad on).
  for (int r = 0; r < 16; ++r) {
    const int row = m0 + 16 * warp + r;
    if (row >= p.t_pad) break;  // warp-uniform
    const float acc = warp_dsum<DV>(p, (int64_t{row} * p.heads + h) * DV, row < p.t, lane);
    if (lane == 0) p.dsum[int64_t{h} * p.t_pad + row] = acc;
  }

  const int wg_row0 = m0 + 64 * wg;
  const int row_lo = wg_row0 + 16 * wq + g;
  const int rows[2] = {row_lo, row_lo + 8};
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};  // log2 units
  float sa[kTileKeys / 2];  // [4i + 2r + e] = (row rows[r], key n0 + 8i + 2c + e)
  zero(sa);
  const uint64_t q_desc = make_descriptor(q_s + wg * 64 * 128);

  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (j + 1 < n_tiles) load_k(j + 1);  // into the stage tile j - 1 used (its MMAs are done)
    cp_async_commit();

    const uint64_t k_desc = make_descriptor(k_s + (j % kStages) * Shape::kKStageBytes);
    fence_accumulators(sa);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk)
      wgmma_m64n128k16_ss(sa, q_desc + k_major_step<kWideBytes>(kk),
                          k_desc + k_major_step<kWideBytes>(kk), kk == 0 ? 0 : 1);
    wgmma_commit();
    wgmma_wait<0>();
    fence_accumulators(sa);

    const int n0 = j * kTileKeys;
    const bool needs_mask = n0 + kTileKeys - 1 > wg_row0;  // keys past t are past every row < t
#pragma unroll
    for (int i = 0; i < kTileKeys / 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = sa[4 * i + e] * p.scale_log2;
        if (needs_mask && n0 + 8 * i + 2 * c + (e & 1) > rows[e >> 1]) x = -INFINITY;
        sa[4 * i + e] = x;
      }
    // A row lives in the 4 lanes of a quad (same g); row r of this thread: entries 4i + 2r + e.
#pragma unroll
    for (int r = 0; r < 2; ++r)
      online_lse_step<kTileKeys / 8>(row_max[r], row_sum[r],
                                     [&](int i, int e) { return sa[4 * i + 2 * r + e]; });
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r)
    store_quad_lse2(p.lse + int64_t{h} * p.t_pad + rows[r], row_max[r], row_sum[r],
                    c == 0 && rows[r] < p.t_pad, rows[r] < p.t);
#else
  __trap();  // compiled for sm_90a only; the launcher checks the device first
#endif
}

// ---- dK/dV per key block -----------------------------------------------------------------------

// One block per SM for both widths: (64, 64) needs 212 registers (dK, dV, Sᵀ, dPᵀ: 32 each, plus
// the fragments); capped at 128 for two blocks it spills (180 with K, V read from shared memory).
template <int DK, int DV>
__global__ void __launch_bounds__(kThreads, 1) dkdv_wgmma_kernel(const BwdParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Shape = DkDvWgmmaShape<DK, DV>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = shared_address(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // swizzle atoms: 1024 B
  const uint32_t k_s = base;                                  // [dk/64][128 rows]
  const uint32_t v_s = k_s + Shape::kKBytes;                  // [dv/64][128 rows]
  const uint32_t q_s = v_s + Shape::kVBytes;                  // stage b at + b * kQStageBytes
  const uint32_t do_s = q_s + kStages * Shape::kQStageBytes;  // stage b at + b * kDoStageBytes
  const uint32_t f_s = do_s + kStages * Shape::kDoStageBytes;  // lse2 [2][64], D [2][64]
  const float* const lse_f = reinterpret_cast<const float*>(smem_raw + (f_s - raw));
  const float* const dsum_f = lse_f + kStages * kQueryTile;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wg = tid / 128, wq = warp % 4;
  const int g = lane >> 2, c = lane & 3;

  const int kvh = static_cast<int>(blockIdx.x) / p.split, part = static_cast<int>(blockIdx.x) % p.split;
  const int n0 = static_cast<int>(blockIdx.y) * kBlockKeys;
  const int h_first = kvh * p.group + part * p.heads_per_split;
  const int q_first = n0 / kQueryTile;  // the first query tile that sees a key of the block
  const int per_head = (p.t + kQueryTile - 1) / kQueryTile - q_first;  // >= 1: n0 < t
  const int n_iter = p.heads_per_split * per_head;
  const int64_t q_stride = int64_t{p.heads} * DK, do_stride = int64_t{p.heads} * DV;
  const int64_t k_stride = int64_t{p.kv_heads} * DK, v_stride = int64_t{p.kv_heads} * DV;

  // Step `it`: query head h_first + it / per_head, query tile q_first + it % per_head.
  const auto prefetch = [&](int it) {
    const int b = it % kStages;
    const int h = h_first + it / per_head, m0 = (q_first + it % per_head) * kQueryTile;
    load_tile<kQueryTile, DK>(q_s + b * Shape::kQStageBytes,
                              p.q + int64_t{m0} * q_stride + int64_t{h} * DK, q_stride, p.t - m0);
    load_tile<kQueryTile, DV>(do_s + b * Shape::kDoStageBytes,
                              p.dout + int64_t{m0} * do_stride + int64_t{h} * DV, do_stride, p.t - m0);
    // 64 floats each = 16 chunks; always in bounds (m0 + 64 <= t_pad).
    const int64_t at = int64_t{h} * p.t_pad + m0;
    if (tid < 16)
      cp_async_16(f_s + (b * kQueryTile + 4 * tid) * 4, p.lse + at + 4 * tid, true);
    else if (tid < 32)
      cp_async_16(f_s + ((kStages + b) * kQueryTile + 4 * (tid - 16)) * 4,
                  p.dsum + at + 4 * (tid - 16), true);
  };
  load_tile<kBlockKeys, DK>(k_s, p.k + int64_t{n0} * k_stride + int64_t{kvh} * DK, k_stride, p.t - n0);
  load_tile<kBlockKeys, DV>(v_s, p.v + int64_t{n0} * v_stride + int64_t{kvh} * DV, v_stride, p.t - n0);
  prefetch(0);
  cp_async_commit();

  // This thread's keys: key_lo (accumulator entries 4i, 4i+1) and key_lo + 8 (4i+2, 4i+3).
  const int wg_key0 = n0 + 64 * wg;
  const int key_lo = wg_key0 + 16 * wq + g;
  const int keys[2] = {key_lo, key_lo + 8};

  float dk_acc[DK / 2], dv_acc[DV / 2];  // [4i + 2r + e] = (key keys[r], dim 8i + 2c + e)
  float st[32], dpt[32];                 // [4i + 2r + e] = (key keys[r], query m0 + 8i + 2c + e)
  uint32_t pf[kSteps16][4], dsf[kSteps16][4];  // Pᵀ, dSᵀ as bf16 A fragments, 16 queries each
  zero(dk_acc);
  zero(dv_acc);
  zero(st);
  zero(dpt);
#pragma unroll
  for (int kk = 0; kk < kSteps16; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) pf[kk][i] = dsf[kk][i] = 0u;

  // A operands K and V: this WG's 64 key rows start 64 rows (8 KiB) into each 128-row panel.
  const uint64_t k_desc = make_descriptor(k_s + wg * 64 * 128);
  const uint64_t v_desc = make_descriptor(v_s + wg * 64 * 128);
  // (64, 64): K and V, resident for the whole block, are also kept as A fragments in registers
  // (16 each), so that Sᵀ and dPᵀ read only Q / dO from shared memory (half the traffic of the
  // shared-memory A form). (128, 128) has no registers left for them (64 more).
  constexpr bool kKVInRegisters = DK == 64 && DV == 64;
  uint32_t k_frag[kKVInRegisters ? DK / 16 : 1][4], v_frag[kKVInRegisters ? DV / 16 : 1][4];
  if constexpr (kKVInRegisters) {
    cp_async_wait<0>();  // K, V (and step 0's tiles) have landed for every thread
    __syncthreads();
    const int row0 = wg * 64 + wq * 16;
    load_fragments<DK / 16>(k_frag, k_s, row0, lane);
    load_fragments<DV / 16>(v_frag, v_s, row0, lane);
  }

  for (int it = 0; it < n_iter; ++it) {
    const int b = it % kStages;
    cp_async_wait<0>();   // step it's tiles (the only group in flight) have landed ...
    fence_proxy_async();  // ... are visible to the async proxy (wgmma) ...
    __syncthreads();      // ... for every thread's copies
    // Into stage (it + 1) % 2, which held step it - 1: every thread waited for its MMAs (and
    // read its lse2/D) before this barrier.
    if (it + 1 < n_iter) prefetch(it + 1);
    cp_async_commit();

    const int m0 = (q_first + it % per_head) * kQueryTile;
    const uint32_t q_tile = q_s + b * Shape::kQStageBytes;
    const uint32_t do_tile = do_s + b * Shape::kDoStageBytes;
    const uint64_t q_kdesc = make_descriptor(q_tile), do_kdesc = make_descriptor(do_tile);

    fence_accumulators(st);
    fence_accumulators(dpt);
    wgmma_fence();
    // Sᵀ = K·Qᵀ (one group), then dPᵀ = V·dOᵀ (another).
    product_64x64<DK / 16, kKVInRegisters>(st, k_frag, k_desc, q_kdesc);
    product_64x64<DV / 16, kKVInRegisters>(dpt, v_frag, v_desc, do_kdesc);

    wgmma_wait<1>();  // Sᵀ is done; dPᵀ may still run
    fence_accumulators(st);
    if constexpr (kKVInRegisters) fence_fragments(k_frag);  // live (untouched) until Sᵀ read them
    // Pᵀ = 2^(x − lse2[query]); 0 where the key is past the query or the query past t.
    const float* const lse_t = lse_f + b * kQueryTile;
    const float* const dsum_t = dsum_f + b * kQueryTile;
    const bool needs_mask = wg_key0 + 63 > m0 || m0 + kQueryTile > p.t;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float2 l2 = *reinterpret_cast<const float2*>(lse_t + 8 * i + 2 * c);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int query = m0 + 8 * i + 2 * c + (e & 1);
        float x = fmaf(st[4 * i + e], p.scale_log2, -((e & 1) ? l2.y : l2.x));
        if (needs_mask && (keys[e >> 1] > query || query >= p.t)) x = -INFINITY;
        st[4 * i + e] = exp2_approx(x);
      }
    }
    // dV += Pᵀ·dO (a third group, overlapping the dS work below): k16 step kk = queries
    // 16kk..16kk+15 = rows of the MN-major dO panels (LBO: the 64-row panel size between dims
    // 0..63 and 64..127).
    pack_fragments(pf, st);
    fence_fragments(pf);
    fence_accumulators(dv_acc);
    wgmma_fence();
    const uint64_t do_mdesc = make_descriptor_mn(do_tile, kNarrowBytes);
#pragma unroll
    for (int kk = 0; kk < kSteps16; ++kk) mma_rs<DV>(dv_acc, pf[kk], do_mdesc + mn_major_step(kk));
    wgmma_commit();

    wgmma_wait<1>();  // dPᵀ is done; dV may still run
    fence_accumulators(dpt);
    if constexpr (kKVInRegisters) fence_fragments(v_frag);
    // dSᵀ = Pᵀ ∘ (dPᵀ − D[query]) (P in f32, before its bf16 rounding), straight into the
    // fragments (no f32 dS array).
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float2 d = *reinterpret_cast<const float2*>(dsum_t + 8 * i + 2 * c);
      const float2 lo = make_float2(st[4 * i + 0] * (dpt[4 * i + 0] - d.x),
                                    st[4 * i + 1] * (dpt[4 * i + 1] - d.y));
      const float2 hi = make_float2(st[4 * i + 2] * (dpt[4 * i + 2] - d.x),
                                    st[4 * i + 3] * (dpt[4 * i + 3] - d.y));
      // Layout of pack_fragments: block i = 2kk + half, rows g (lo) and g + 8 (hi).
      dsf[i / 2][2 * (i % 2)] = pack_bf16(lo.x, lo.y);
      dsf[i / 2][2 * (i % 2) + 1] = pack_bf16(hi.x, hi.y);
    }
    fence_fragments(dsf);
    fence_accumulators(dk_acc);
    wgmma_fence();
    // dK += dSᵀ·Q (a fourth group), B = Q MN-major like dO above.
    const uint64_t q_mdesc = make_descriptor_mn(q_tile, kNarrowBytes);
#pragma unroll
    for (int kk = 0; kk < kSteps16; ++kk) mma_rs<DK>(dk_acc, dsf[kk], q_mdesc + mn_major_step(kk));
    wgmma_commit();
    // Waited for here (before the next barrier releases this stage), not in the next step:
    // ptxas (CUDA 13.0) serializes the wgmma pipeline (C7515) when groups stay in flight across
    // the loop's back edge.
    wgmma_wait<0>();
    fence_accumulators(dv_acc);
    fence_accumulators(dk_acc);
    fence_fragments(pf);
    fence_fragments(dsf);
  }
  cp_async_wait<0>();  // the empty last group

  // Key keys[r]: accumulator entries 4i + 2r + e (dims 8i + 2c + e); dK scaled here, once.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = keys[r];
    if (key >= p.t) continue;
    store_key_row<DK, DV>(
        p, key, kvh, part, c, [&](int i, int e) { return p.scale * dk_acc[4 * i + 2 * r + e]; },
        [&](int i, int e) { return dv_acc[4 * i + 2 * r + e]; });
  }
#else
  __trap();  // compiled for sm_90a only; the launcher checks the device first
#endif
}

// ---- dQ per query block ------------------------------------------------------------------------

// (64, 64): two blocks per SM (124 registers, no spills with CUDA 13.0); (128, 128): one.
template <int DK, int DV>
__global__ void __launch_bounds__(kThreads, DK == 64 ? 2 : 1) dq_wgmma_kernel(const BwdParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Shape = DqWgmmaShape<DK, DV>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t base = (shared_address(smem_raw) + 1023u) & ~1023u;
  const uint32_t q_s = base;                           // [dk/64][128 rows]
  const uint32_t do_s = q_s + Shape::kQBytes;          // [dv/64][128 rows]
  const uint32_t k_s = do_s + Shape::kDoBytes;         // stage b at + b * kKStageBytes
  const uint32_t v_s = k_s + kStages * Shape::kKStageBytes;  // stage b at + b * kVStageBytes

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wg = tid / 128, wq = warp % 4;
  const int g = lane >> 2, c = lane & 3;

  const int h = static_cast<int>(blockIdx.x);
  const int m0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * kBlockQueries;
  const int kvh = h / p.group;
  const int n_tiles = (min(m0 + kBlockQueries, p.t) - 1) / kKeyTile + 1;
  const int64_t q_stride = int64_t{p.heads} * DK, do_stride = int64_t{p.heads} * DV;
  const int64_t k_stride = int64_t{p.kv_heads} * DK, v_stride = int64_t{p.kv_heads} * DV;
  const bf16* const k_head = p.k + int64_t{kvh} * DK;
  const bf16* const v_head = p.v + int64_t{kvh} * DV;
  const auto load_kv = [&](int j) {
    const int n0 = j * kKeyTile, b = j % kStages;
    load_tile<kKeyTile, DK>(k_s + b * Shape::kKStageBytes, k_head + n0 * k_stride, k_stride, p.t - n0);
    load_tile<kKeyTile, DV>(v_s + b * Shape::kVStageBytes, v_head + n0 * v_stride, v_stride, p.t - n0);
  };
  load_tile<kBlockQueries, DK>(q_s, p.q + int64_t{m0} * q_stride + int64_t{h} * DK, q_stride, p.t - m0);
  load_tile<kBlockQueries, DV>(do_s, p.dout + int64_t{m0} * do_stride + int64_t{h} * DV, do_stride,
                               p.t - m0);
  load_kv(0);
  cp_async_commit();

  // This thread's rows: row_lo (accumulator entries 4i, 4i+1) and row_lo + 8 (4i+2, 4i+3). The
  // workspace rows end at t_pad (a multiple of 64, not 128): rows past t read nothing (0).
  const int wg_row0 = m0 + 64 * wg;
  const int row_lo = wg_row0 + 16 * wq + g;
  const int rows[2] = {row_lo, row_lo + 8};
  float lse2[2], dsum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool valid = rows[r] < p.t;
    lse2[r] = valid ? p.lse[int64_t{h} * p.t_pad + rows[r]] : 0.0f;
    dsum[r] = valid ? p.dsum[int64_t{h} * p.t_pad + rows[r]] : 0.0f;
  }

  float dq_acc[DK / 2];  // [4i + 2r + e] = (row rows[r], dim 8i + 2c + e)
  float sa[32], dpa[32];  // [4i + 2r + e] = (row rows[r], key n0 + 8i + 2c + e)
  uint32_t dsf[kSteps16][4];  // dS as bf16 A fragments, 16 keys each
  zero(dq_acc);
  zero(sa);
  zero(dpa);
#pragma unroll
  for (int kk = 0; kk < kSteps16; ++kk)
#pragma unroll
    for (int i = 0; i < 4; ++i) dsf[kk][i] = 0u;

  // A operands Q and dO: this WG's 64 rows start 64 rows (8 KiB) into each 128-row panel.
  const uint64_t q_desc = make_descriptor(q_s + wg * 64 * 128);
  const uint64_t do_desc = make_descriptor(do_s + wg * 64 * 128);
  // (128, 128): Q and dO, resident for the whole block, are also kept as A fragments in registers
  // (32 each; one block per SM either way), so that S and dP read only K / V from shared memory.
  // (64, 64) keeps them in shared memory: 32 more registers would cost the second block per SM.
  constexpr bool kQInRegisters = DK == 128 && DV == 128;
  uint32_t q_frag[kQInRegisters ? DK / 16 : 1][4], do_frag[kQInRegisters ? DV / 16 : 1][4];
  if constexpr (kQInRegisters) {
    cp_async_wait<0>();  // Q, dO (and step 0's tiles) have landed for every thread
    __syncthreads();
    const int row0 = wg * 64 + wq * 16;
    load_fragments<DK / 16>(q_frag, q_s, row0, lane);
    load_fragments<DV / 16>(do_frag, do_s, row0, lane);
  }

  for (int j = 0; j < n_tiles; ++j) {
    const int b = j % kStages;
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    // Into stage (j + 1) % 2, which held step j - 1: every thread waited for its MMAs before
    // this barrier.
    if (j + 1 < n_tiles) load_kv(j + 1);
    cp_async_commit();

    const int n0 = j * kKeyTile;
    const uint32_t k_tile = k_s + b * Shape::kKStageBytes;
    const uint64_t k_kdesc = make_descriptor(k_tile);
    const uint64_t v_kdesc = make_descriptor(v_s + b * Shape::kVStageBytes);

    fence_accumulators(sa);
    fence_accumulators(dpa);
    wgmma_fence();
    // S = Q·Kᵀ (one group), dP = dO·Vᵀ (another).
    product_64x64<DK / 16, kQInRegisters>(sa, q_frag, q_desc, k_kdesc);
    product_64x64<DV / 16, kQInRegisters>(dpa, do_frag, do_desc, v_kdesc);

    wgmma_wait<1>();  // S is done; dP may still run
    fence_accumulators(sa);
    if constexpr (kQInRegisters) fence_fragments(q_frag);  // live (untouched) until S read them
    // P = 2^(x − lse2[row]); 0 where the key is past the row (keys past t are past every row < t).
    const bool needs_mask = n0 + kKeyTile - 1 > wg_row0;
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = fmaf(sa[4 * i + e], p.scale_log2, -lse2[e >> 1]);
        if (needs_mask && n0 + 8 * i + 2 * c + (e & 1) > rows[e >> 1]) x = -INFINITY;
        sa[4 * i + e] = exp2_approx(x);
      }
    wgmma_wait<0>();
    fence_accumulators(dpa);
    if constexpr (kQInRegisters) fence_fragments(do_frag);
    // dS = P ∘ (dP − D[row]), straight into the fragments (layout: pack_fragments).
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      dsf[i / 2][2 * (i % 2)] = pack_bf16(sa[4 * i + 0] * (dpa[4 * i + 0] - dsum[0]),
                                          sa[4 * i + 1] * (dpa[4 * i + 1] - dsum[0]));
      dsf[i / 2][2 * (i % 2) + 1] = pack_bf16(sa[4 * i + 2] * (dpa[4 * i + 2] - dsum[1]),
                                              sa[4 * i + 3] * (dpa[4 * i + 3] - dsum[1]));
    }

    fence_fragments(dsf);
    fence_accumulators(dq_acc);
    wgmma_fence();
    // dQ += dS·K: k16 step kk = keys 16kk..16kk+15 = rows of the MN-major K panels.
    const uint64_t k_mdesc = make_descriptor_mn(k_tile, kNarrowBytes);
#pragma unroll
    for (int kk = 0; kk < kSteps16; ++kk) mma_rs<DK>(dq_acc, dsf[kk], k_mdesc + mn_major_step(kk));
    wgmma_commit();
    // Waited for here, not in the next step: ptxas (CUDA 13.0) serializes the wgmma pipeline
    // (C7515) when groups stay in flight across the loop's back edge.
    wgmma_wait<0>();
    fence_accumulators(dq_acc);
    fence_fragments(dsf);
  }
  cp_async_wait<0>();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= p.t) continue;
    bf16* const row = p.dq + (int64_t{rows[r]} * p.heads + h) * DK;
#pragma unroll
    for (int i = 0; i < DK / 8; ++i)
      store_bf16_pair(row + 8 * i + 2 * c, p.scale * dq_acc[4 * i + 2 * r],
                      p.scale * dq_acc[4 * i + 2 * r + 1], p.overwrite);
  }
#else
  __trap();  // compiled for sm_90a only; the launcher checks the device first
#endif
}

template <typename Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  REFINERY_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
}

template <int DK, int DV>
void launch_lse(const BwdParams& p, cudaStream_t stream) {
  constexpr size_t kSmem = LseWgmmaShape<DK>::kSmemBytes;
  set_smem(lse_wgmma_kernel<DK, DV>, kSmem);
  const dim3 grid(static_cast<unsigned>(p.heads),
                  static_cast<unsigned>((p.t + kBlockQueries - 1) / kBlockQueries));
  lse_wgmma_kernel<DK, DV><<<grid, kThreads, kSmem, stream>>>(p);
  REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (wgmma lse)");
}

template <int DK, int DV>
void launch_dkdv(const BwdParams& p, cudaStream_t stream) {
  constexpr size_t kSmem = DkDvWgmmaShape<DK, DV>::kSmemBytes;
  set_smem(dkdv_wgmma_kernel<DK, DV>, kSmem);
  const dim3 grid(static_cast<unsigned>(p.kv_heads * p.split),
                  static_cast<unsigned>((p.t + kBlockKeys - 1) / kBlockKeys));
  dkdv_wgmma_kernel<DK, DV><<<grid, kThreads, kSmem, stream>>>(p);
  REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (wgmma dk, dv)");
}

template <int DK, int DV>
void launch_dq(const BwdParams& p, cudaStream_t stream) {
  constexpr size_t kSmem = DqWgmmaShape<DK, DV>::kSmemBytes;
  set_smem(dq_wgmma_kernel<DK, DV>, kSmem);
  const dim3 grid(static_cast<unsigned>(p.heads),
                  static_cast<unsigned>((p.t + kBlockQueries - 1) / kBlockQueries));
  dq_wgmma_kernel<DK, DV><<<grid, kThreads, kSmem, stream>>>(p);
  REFINERY_CUDA_CHECK_LAUNCH("flash_attention_backward (wgmma dq)");
}

void check_launch(const BwdParams& p, int dk) {
  REFINERY_CHECK(dk == 64 || dk == 128, "flash_attention_backward (wgmma): head width ", dk,
                 " is not supported");
  REFINERY_CHECK(p.t > 0 && p.t_pad % 64 == 0 && p.t_pad >= p.t,
                 "flash_attention_backward (wgmma): inconsistent t ", p.t, ", t_pad ", p.t_pad);
  REFINERY_CHECK(wgmma_backward_available(),
                 "flash_attention_backward (wgmma): the kernels need a compute 9.0 GPU (H100/H200)");
}

}  // namespace

bool wgmma_backward_supports(int64_t dk, int64_t dv) {
  return (dk == 64 && dv == 64) || (dk == 128 && dv == 128);
}

bool wgmma_backward_available() { return grouped_gemm_wgmma_available(); }

void wgmma_backward_lse(const BwdParams& p, int dk, cudaStream_t stream) {
  check_launch(p, dk);
  if (dk == 64) return launch_lse<64, 64>(p, stream);
  return launch_lse<128, 128>(p, stream);
}

void wgmma_backward_dkdv(const BwdParams& p, int dk, cudaStream_t stream) {
  check_launch(p, dk);
  if (dk == 64) return launch_dkdv<64, 64>(p, stream);
  return launch_dkdv<128, 128>(p, stream);
}

void wgmma_backward_dq(const BwdParams& p, int dk, cudaStream_t stream) {
  check_launch(p, dk);
  if (dk == 64) return launch_dq<64, 64>(p, stream);
  return launch_dq<128, 128>(p, stream);
}

}  // namespace refinery::backend::cuda::flash_bwd_detail
