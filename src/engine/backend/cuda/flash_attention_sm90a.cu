// Causal flash attention forward on Hopper (sm_90a) with warpgroup MMAs (wgmma.mma_async),
// FlashAttention-3 style. Same contract as flash_attention.cu (flash_attention.hpp: q [t, heads,
// dk], k [s, kv_heads, dk], v [s, kv_heads, dv], out [t, heads, dv], bf16; query i sees keys
// [0, s - t + i]; query head h uses kv head h / (heads / kv_heads); softmax(q·kᵀ·scale), f32
// accumulation, bf16 output; no log-sum-exp output: the backward recomputes its own).
// Compiled for sm_90a only (CMakeLists.txt: *_sm90a.cu); the launcher refuses other devices.
//
// Why: the mma.sync kernel reaches 177 TFLOP/s (MLA) / 212 (GQA 128) on an H100 whose dense bf16
// GEMM ceiling is ~780; wgmma is the instruction that gets near that.
//
// Block = (head h, 128 query rows m0..m0+127), 256 threads = two warpgroups (WG); WG w owns query
// rows m0 + 64w .. m0 + 64w + 63 (warp q of the WG: rows 16q..16q+15 of those 64). The block walks
// the key tiles of kBlockN = 128 keys that some row of it can see. Per tile j and WG:
//   S_j = Q·K_jᵀ     m64n128k16 x (dk/16), A = Q and B = K_j both K-major in shared memory
//   softmax          online, f32 in registers (scores in log2 units, exp2), causal mask only on
//                    tiles that cross the diagonal or the end of the keys
//   O += P_j·V_j     m64n{dv}k16 x 8, A = P_j from REGISTERS (the S accumulator rounded to bf16,
//                    whose layout is the A fragment: wgmma_ptx.cuh), B = V_j MN-major in shared
//                    memory (V rows are keys with dv contiguous: imm-trans-b = 1, no transpose copy)
// Intra-warpgroup overlap (FA3 §3.2): iteration j issues S_j and then P_{j-1}·V_{j-1} (two wgmma
// groups), waits for S_j only, runs the softmax of S_j while the tensor cores do P_{j-1}·V_{j-1},
// then waits for that, rescales O by 2^(m_{j-1} - m_j) and packs P_j. The two WGs overlap each
// other too (one's softmax, the other's MMAs).
//
// Shared memory: every operand is stored as "panels" of 128 rows x 128 bytes (64 bf16 columns),
// 16 KiB each, 128-byte swizzled (chunk c of row r at r*128 + ((c ^ r%8) * 16), wgmma_ptx.cuh),
// all panel bases 1024-byte aligned:
//   Q  [dk/64 panels]          rows = the block's 128 query rows, panel p = dims 64p..64p+63
//   K  [2 stages][dk/64 panels] rows = the tile's 128 keys
//   V  [2 stages][dv/64 panels] rows = the tile's 128 keys, panel p = dims 64p..64p+63
// filled by cp.async from all 256 threads (rows past t / s are zero-filled, so masked keys meet
// zeros, never stale NaN/Inf). (dk, dv) = (192, 128): 13 panels = 208 KiB (+1 KiB alignment), one
// block per SM; (128, 128): 160 KiB; (64, 64): 80 KiB.
// Pipeline: at the top of iteration j the block waits for its cp.async groups, fences the async
// proxy (cp.async writes through the generic proxy, wgmma reads through the async proxy) and
// synchronizes; then it issues the MMAs of iteration j and, while they run, refills K stage
// (j+1)%2 with K_{j+1} (it held K_{j-1}, last read by S_{j-1} in iteration j-1) and V stage j%2
// with V_j (it held V_{j-2}, last read in iteration j-1), one iteration ahead of their use.
// Registers per thread (ptxas, CUDA 13.0): 244 for (192, 128), 236 for (128, 128), 182 for (64, 64),
// no spills; S 64 + O dv/2 + P 32 of them.
//
// Grid: x = head, y = query tile in reverse order (the longest blocks first, as flash_attention.cu).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/flash_attention.hpp"
#include "engine/backend/cuda/grouped_gemm.hpp"
#include "engine/backend/cuda/mma_ptx.cuh"
#include "engine/backend/cuda/wgmma_ptx.cuh"

namespace refinery::backend::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kBlockM = 128;                 // query rows per block (2 WGs x 64)
constexpr int kBlockN = 128;                 // keys per tile
constexpr int kThreads = 256;                // two warpgroups
constexpr int kPanelRows = 128;              // = kBlockM = kBlockN: every panel has 128 rows
constexpr int kPanelBytes = kPanelRows * 128;  // 16 KiB
static_assert(kBlockM == kPanelRows && kBlockN == kPanelRows, "Q, K and V panels share one shape");

template <int DK, int DV>
struct WgmmaFlashShape {
  static_assert(DK % 64 == 0 && DV % 64 == 0, "widths are whole 64-column swizzle panels");
  static_assert(DV == 64 || DV == 128, "P·V is one m64n64k16 or m64n128k16 per 16 keys");
  static constexpr int kQPanels = DK / 64, kKPanels = DK / 64, kVPanels = DV / 64;
  static constexpr int kQBytes = kQPanels * kPanelBytes;
  static constexpr int kKStageBytes = kKPanels * kPanelBytes;
  static constexpr int kVStageBytes = kVPanels * kPanelBytes;
  // + 1024: the dynamic shared window is only 16-byte aligned; the kernel rounds its base up.
  static constexpr size_t kSmemBytes = size_t{kQBytes} + 2 * kKStageBytes + 2 * kVStageBytes + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "over the H100's 227 KiB of shared memory per block");
};

struct WgmmaFlashParams {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  bf16* out;
  int t, s, heads, kv_heads, group;  // group = heads / kv_heads
  float scale_log2;                  // scale · log2(e)
  float* lse;                        // [heads, t] natural-log log-sum-exp, or null: not wanted
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

using namespace ptx;

// exp2_approx, pack_bf16: mma_ptx.cuh.

// Rows [0, 128) x WIDTH of a tile from global (row r at src + r * row_stride) into WIDTH/64
// swizzled panels at shared address dst (panel p at dst + p * kPanelBytes, dims 64p..64p+63);
// rows >= rows_valid are zero-filled. Thread T copies 16-byte chunk c = T % 8 (dims 8c..8c+7 of a
// panel) of rows T / 8 + 32i, i = 0..3, in every panel: 8 consecutive threads read one 128-byte
// row segment (coalesced) and write its 8 chunks to 8 distinct 16-byte slots (no bank conflicts).
// Rows 32i + T/8 have the same row % 8, so the swizzled column (c ^ row % 8) is per thread, and
// the per-thread state is one shared offset and one global pointer (few registers).
template <int WIDTH>
__device__ __forceinline__ void load_tile(uint32_t dst, const bf16* src, int64_t row_stride,
                                          int rows_valid) {
  static_assert(kThreads == 256 && kPanelRows == 128, "32 rows per pass, 4 passes");
  const int t = static_cast<int>(threadIdx.x);
  const int row = t >> 3, c = t & 7;
  const uint32_t dst_t = dst + row * 128 + ((c ^ (row & 7)) << 4);
  const bf16* const src_t = src + row * row_stride + c * 8;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const bool valid = row + 32 * i < rows_valid;
#pragma unroll
    for (int panel = 0; panel < WIDTH / 64; ++panel) {
      const bf16* from = valid ? src_t + 32 * i * row_stride + panel * 64 : src;  // src: readable
      cp_async_16(dst_t + panel * kPanelBytes + i * 32 * 128, from, valid);
    }
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads, 1) flash_attention_wgmma_kernel(const WgmmaFlashParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Shape = WgmmaFlashShape<DK, DV>;
  constexpr int kSAcc = kBlockN / 2;  // S accumulators per thread: 64 x 128 / 128 threads
  constexpr int kOAcc = DV / 2;       // O accumulators per thread
  constexpr int kPSteps = kBlockN / 16;  // k16 steps of P·V (keys of one tile)
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t base = (shared_address(smem_raw) + 1023u) & ~1023u;  // swizzle atoms: 1024 B
  const uint32_t q_s = base;
  const uint32_t k_s = q_s + Shape::kQBytes;            // stage st at k_s + st * kKStageBytes
  const uint32_t v_s = k_s + 2 * Shape::kKStageBytes;   // stage st at v_s + st * kVStageBytes

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int wg = tid / 128;  // warpgroup: query rows 64wg..64wg+63 of the block
  const int wq = warp % 4;   // warp within the WG: rows 16wq..16wq+15 of the WG's 64
  const int g = lane >> 2, c = lane & 3;  // accumulator coordinates (wgmma_ptx.cuh)

  const int h = static_cast<int>(blockIdx.x);
  const int m0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * kBlockM;  // first query row
  const int kvh = h / p.group;
  const int offset = p.s - p.t;  // query i sees keys [0, offset + i]
  const int last_row = min(m0 + kBlockM, p.t) - 1;  // last real row of the block
  const int n_tiles = (offset + last_row + 1 + kBlockN - 1) / kBlockN;  // >= 1

  const int64_t q_row_stride = int64_t{p.heads} * DK;
  const int64_t k_row_stride = int64_t{p.kv_heads} * DK;
  const int64_t v_row_stride = int64_t{p.kv_heads} * DV;
  const bf16* const k_head = p.k + int64_t{kvh} * DK;  // key 0 of this kv head
  const bf16* const v_head = p.v + int64_t{kvh} * DV;
  auto load_k = [&](int tile) {
    const int n0 = tile * kBlockN;
    load_tile<DK>(k_s + (tile & 1) * Shape::kKStageBytes, k_head + n0 * k_row_stride, k_row_stride,
                  p.s - n0);
  };
  auto load_v = [&](int tile) {
    const int n0 = tile * kBlockN;
    load_tile<DV>(v_s + (tile & 1) * Shape::kVStageBytes, v_head + n0 * v_row_stride, v_row_stride,
                  p.s - n0);
  };

  // cp.async group 0: Q and K_0. Group 1: K_1 (if any) and V_0.
  load_tile<DK>(q_s, p.q + int64_t{m0} * q_row_stride + int64_t{h} * DK, q_row_stride, p.t - m0);
  load_k(0);
  cp_async_commit();
  if (n_tiles > 1) load_k(1);
  load_v(0);
  cp_async_commit();

  // This thread's two rows: row_lo (accumulator entries 4i, 4i+1) and row_lo + 8 (4i+2, 4i+3).
  const int wg_row0 = m0 + 64 * wg;
  const int row_lo = wg_row0 + 16 * wq + g;
  // Last visible key per row; rows past t (discarded) see every key, which keeps them finite.
  const int last_key[2] = {min(offset + row_lo, p.s - 1), min(offset + row_lo + 8, p.s - 1)};

  float o[kOAcc];   // O: 64 x DV per WG, o[4i + 2r + e] = (row_lo + 8r, dim 8i + 2c + e)
  float sa[kSAcc];  // S (then P in f32): sa[4i + 2r + e] = (row_lo + 8r, key n0 + 8i + 2c + e)
  uint32_t pf[kPSteps][4];  // P of the previous tile as bf16 A fragments, one per 16 keys
#pragma unroll
  for (int i = 0; i < kOAcc; ++i) o[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < kSAcc; ++i) sa[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < kPSteps; ++i) pf[i][0] = pf[i][1] = pf[i][2] = pf[i][3] = 0u;
  float row_max[2] = {-INFINITY, -INFINITY};  // log2 units
  float row_sum[2] = {0.0f, 0.0f};            // this thread's columns; the quad sums at the end

  // Q rows of this WG start 64 rows (8 KiB) into each Q panel; k16 step kk of S reads panel kk/4
  // at byte (kk%4) * 32 of every row. (A WG whose rows are all past t computes on zero rows and
  // stores nothing: no branch around the wgmma pipeline.)
  const uint64_t q_desc = make_descriptor(q_s + wg * 64 * 128);

  // Scores of tile j to log2 units, causal/end mask, online softmax update of row_max/row_sum; sa
  // becomes P_j (f32) and alpha the factor 2^(m_old - m_new) for O.
  const auto softmax = [&](int j, float (&alpha)[2]) {
    const int n0 = j * kBlockN;
#pragma unroll
    for (int i = 0; i < kSAcc; ++i) sa[i] *= p.scale_log2;
    // WG-uniform test: only tiles crossing the diagonal of the WG's first row or the end of the
    // keys need the mask.
    if (n0 + kBlockN - 1 > offset + wg_row0 || n0 + kBlockN > p.s) {
#pragma unroll
      for (int i = 0; i < kSAcc / 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = n0 + 8 * i + 2 * c + (e & 1);
          if (key > last_key[e >> 1]) sa[4 * i + e] = -INFINITY;
        }
    }
    // A row lives in the 4 lanes of a quad (same g): reduce with xor 1, 2.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int i = 0; i < kSAcc / 4; ++i)
        mx = fmaxf(mx, fmaxf(sa[4 * i + 2 * r], sa[4 * i + 2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with nothing visible yet keeps m = -inf; subtract 0 then so exp2 gives 0, not NaN.
      const float base_r = mx == -INFINITY ? 0.0f : mx;
      alpha[r] = exp2_approx(row_max[r] - base_r);  // 0 on the first tile (row_max = -inf)
      row_max[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kSAcc / 4; ++i) {
        sa[4 * i + 2 * r] = exp2_approx(sa[4 * i + 2 * r] - base_r);
        sa[4 * i + 2 * r + 1] = exp2_approx(sa[4 * i + 2 * r + 1] - base_r);
        sum += sa[4 * i + 2 * r] + sa[4 * i + 2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha[r] + sum;
    }
  };
  // P_j as the A fragments of the next P·V: accumulator blocks 2kk, 2kk+1 = keys 16kk..16kk+15.
  const auto pack_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) {
      pf[kk][0] = pack_bf16(sa[8 * kk + 0], sa[8 * kk + 1]);  // row g,   keys 16kk + 2c, +1
      pf[kk][1] = pack_bf16(sa[8 * kk + 2], sa[8 * kk + 3]);  // row g+8, keys 16kk + 2c, +1
      pf[kk][2] = pack_bf16(sa[8 * kk + 4], sa[8 * kk + 5]);  // row g,   keys 16kk + 8 + 2c, +1
      pf[kk][3] = pack_bf16(sa[8 * kk + 6], sa[8 * kk + 7]);  // row g+8, keys 16kk + 8 + 2c, +1
    }
  };
  // S_j = Q·K_jᵀ (one wgmma group); the first k16 step overwrites the stale accumulators.
  const auto issue_s = [&](int j) {
    const uint64_t k_desc = make_descriptor(k_s + (j & 1) * Shape::kKStageBytes);
#pragma unroll
    for (int kk = 0; kk < DK / 16; ++kk) {
      const uint64_t step = ((kk >> 2) * kPanelBytes + (kk & 3) * 32) >> 4;  // descriptor units
      wgmma_m64n128k16_ss(sa, q_desc + step, k_desc + step, kk == 0 ? 0 : 1);
    }
    wgmma_commit();
  };
  // O += P_j·V_j (one wgmma group): k16 step kk = keys 16kk..16kk+15 = V rows 16kk.. of every
  // panel (16 rows x 128 B = 2048 B further); N = DV spans the V panels (LBO = kPanelBytes).
  const auto issue_pv = [&](int j) {
    const uint64_t v_desc = make_descriptor_mn(v_s + (j & 1) * Shape::kVStageBytes, kPanelBytes);
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) {
      const uint64_t vd = v_desc + ((kk * 16 * 128) >> 4);
      if constexpr (DV == 128)
        wgmma_m64n128k16_rs_tb(o, pf[kk], vd);
      else
        wgmma_m64n64k16_rs_tb(o, pf[kk], vd);
    }
    wgmma_commit();
  };
  // Register writes (O rescale, P packing) must precede the MMAs that read them (wgmma.fence), and
  // the compiler must not move them past it.
  const auto fence_all = [&]() {
    fence_accumulators(o);
    fence_accumulators(sa);
    fence_fragments(pf);
    wgmma_fence();
  };

  // Tile 0 (peeled: no wgmma sits in a branch, which would make ptxas serialize them).
  cp_async_wait<1>();   // group 0 (Q, K_0) has landed; group 1 (K_1, V_0) may be in flight
  fence_proxy_async();  // ... and is visible to the async proxy (wgmma)
  __syncthreads();      // ... for every thread's copies
  fence_all();
  issue_s(0);
  wgmma_wait<0>();
  fence_accumulators(sa);
  {
    float alpha[2];
    softmax(0, alpha);  // O is still 0: no rescale
  }
  pack_p();

  for (int j = 1; j < n_tiles; ++j) {
    cp_async_wait<0>();   // K_j and V_{j-1} (the group issued in iteration j-1) have landed
    fence_proxy_async();
    __syncthreads();      // every thread's copies; every WG is done with iteration j-1

    fence_all();
    issue_s(j);
    issue_pv(j - 1);
    // Refill while the MMAs run: K stage (j+1)%2 held K_{j-1} (read by S_{j-1}, waited for in
    // iteration j-1, before the barrier above); V stage j%2 held V_{j-2} (read by P_{j-2}·V_{j-2},
    // waited for in iteration j-1). Neither is read by the MMAs just issued.
    if (j + 1 < n_tiles) load_k(j + 1);
    load_v(j);
    cp_async_commit();
    wgmma_wait<1>();  // S_j is done; P_{j-1}·V_{j-1} may still run
    fence_accumulators(sa);
    float alpha[2];
    softmax(j, alpha);
    wgmma_wait<0>();  // P_{j-1}·V_{j-1} is done: O and the P fragments may be touched
    fence_accumulators(o);
    fence_fragments(pf);
    // O (which now includes P_{j-1}·V_{j-1}, in units of m_{j-1}) to units of m_j.
#pragma unroll
    for (int i = 0; i < kOAcc / 4; ++i) {
      o[4 * i] *= alpha[0];
      o[4 * i + 1] *= alpha[0];
      o[4 * i + 2] *= alpha[1];
      o[4 * i + 3] *= alpha[1];
    }
    pack_p();
  }

  // The last tile's P·V: V_{n-1} is in the group issued in iteration n-1 (group 1 when n = 1).
  cp_async_wait<0>();
  fence_proxy_async();
  __syncthreads();
  fence_all();
  issue_pv(n_tiles - 1);
  wgmma_wait<0>();
  fence_accumulators(o);
  fence_fragments(pf);

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = row_lo + 8 * r;
    if (row >= p.t) continue;
    const float inv = 1.0f / sum;  // sum >= 1: the row's max contributes exp2(0)
    // Natural log: (m + log2 Σ 2^(x − m)) · ln 2, once per row (lane c == 0 of the quad).
    if (p.lse != nullptr && c == 0)
      p.lse[int64_t{h} * p.t + row] = (row_max[r] + log2f(sum)) * 0.6931471805599453f;
    bf16* const out_row = p.out + (int64_t{row} * p.heads + h) * DV;
#pragma unroll
    for (int i = 0; i < kOAcc / 4; ++i) {
      const uint32_t pair = pack_bf16(o[4 * i + 2 * r] * inv, o[4 * i + 2 * r + 1] * inv);
      *reinterpret_cast<uint32_t*>(out_row + 8 * i + 2 * c) = pair;
    }
  }
#else
  __trap();  // compiled for sm_90a only; the launcher checks the device first
#endif
}

template <int DK, int DV>
void launch(const WgmmaFlashParams& params, int query_tiles, cudaStream_t stream) {
  constexpr size_t kSmem = WgmmaFlashShape<DK, DV>::kSmemBytes;
  REFINERY_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_wgmma_kernel<DK, DV>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(kSmem)));
  const dim3 grid(static_cast<unsigned>(params.heads), static_cast<unsigned>(query_tiles));
  flash_attention_wgmma_kernel<DK, DV><<<grid, kThreads, kSmem, stream>>>(params);
  REFINERY_CUDA_CHECK_LAUNCH("flash_attention (wgmma)");
}

}  // namespace

bool flash_attention_wgmma_available() { return grouped_gemm_wgmma_available(); }

bool flash_attention_wgmma_supports(const FlashAttentionArgs& a) {
  return (a.dk == 64 && a.dv == 64) || (a.dk == 128 && a.dv == 128) || (a.dk == 192 && a.dv == 128);
}

void flash_attention_wgmma_bf16(const FlashAttentionArgs& a, void* stream) {
  REFINERY_CHECK(flash_attention_wgmma_supports(a), "flash_attention (wgmma): head widths dk ",
                 a.dk, ", dv ", a.dv,
                 " are not supported (ask flash_attention_wgmma_supports first)");
  REFINERY_CHECK(a.t >= 0 && a.s >= a.t && a.heads > 0 && a.kv_heads > 0 &&
                     a.heads % a.kv_heads == 0,
                 "flash_attention (wgmma): inconsistent sizes t ", a.t, ", s ", a.s, ", heads ",
                 a.heads, ", kv_heads ", a.kv_heads);
  REFINERY_CHECK(a.s < (int64_t{1} << 31) - kBlockN && a.heads < 65536,
                 "flash_attention (wgmma): s ", a.s, " or heads ", a.heads,
                 " exceed the kernel's int range or the grid");
  if (a.t == 0) return;
  const int64_t query_tiles = (a.t + kBlockM - 1) / kBlockM;
  REFINERY_CHECK(query_tiles <= 65535, "flash_attention (wgmma): ", a.t,
                 " queries exceed the grid limit");
  REFINERY_CHECK(aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(a.out),
                 "flash_attention (wgmma): q, k, v and out must be 16-byte aligned (cp.async)");
  REFINERY_CHECK(flash_attention_wgmma_available(),
                 "flash_attention (wgmma): the kernel needs a compute 9.0 GPU (H100/H200)");
  const WgmmaFlashParams params{static_cast<const bf16*>(a.q),
                                static_cast<const bf16*>(a.k),
                                static_cast<const bf16*>(a.v),
                                static_cast<bf16*>(a.out),
                                static_cast<int>(a.t),
                                static_cast<int>(a.s),
                                static_cast<int>(a.heads),
                                static_cast<int>(a.kv_heads),
                                static_cast<int>(a.heads / a.kv_heads),
                                a.scale * 1.4426950408889634f,
                                a.lse};
  const int tiles = static_cast<int>(query_tiles);
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (a.dk == 64) return launch<64, 64>(params, tiles, st);
  if (a.dk == 128) return launch<128, 128>(params, tiles, st);
  return launch<192, 128>(params, tiles, st);
}

}  // namespace refinery::backend::cuda
