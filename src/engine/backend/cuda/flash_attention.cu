// Causal flash attention on bf16 tensors with tensor cores (FlashAttention-2 design).
//
// One thread block = (one head h, one tile of kBlockM = 64 query rows); 4 warps, each owning 16
// query rows. The block walks the key tiles of kBlockN = 64 keys that some row of its tile can see:
//   S = Q·Kᵀ  (per warp 16 x 64, f32 in registers, mma.sync m16n8k16 bf16)
//   online softmax per row: running max m and sum l in f32; when m grows the output accumulator
//   and l are rescaled by 2^(m_old - m_new) (scores are kept in log2 units: x = q·k·scale·log2 e)
//   O += P·V  (P rounded to bf16 as the A operand, O f32 in registers: 16 x dv per warp)
// and finally writes O / l as bf16. The score matrix never leaves registers.
//
// Shared memory (bf16, rows padded by 8 elements = 16 bytes so that the 8 row addresses of one
// ldmatrix fall in distinct bank groups; see kPad):
//   Q [64][dk+8] (read once into registers, or per tile for dk = 256),
//   K [2][64][dk+8], V [2][64][dv+8]: double buffers filled by cp.async, tile j+1 is in flight
//   while tile j is computed.
// (dk, dv) = (192, 128): 109 KiB, two blocks per SM; (128, 128): 85 KiB; (64, 64): 45 KiB.
//
// Bound: compute (tensor cores) for long prefills (each K/V tile is reused by 64 query rows);
// memory for decode (t = 1: one block per head streams the whole cache; no split over keys yet).
//
// Grid: x = head, y = query tile in reverse order, so the blocks with the most key tiles (the
// last query rows) are dispatched first for every head and the short ones fill the tail.
//
// On Hopper, flash_attention_sm90a.cu has a warpgroup-MMA version of this kernel; flash_attention_bf16
// picks between the two (REFINERY_ATTN_KERNEL, flash_attention.hpp).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/mma_ptx.cuh"
#include "engine/backend/cuda/flash_attention.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kBlockM = 64;  // query rows per block
constexpr int kBlockN = 64;  // keys per tile
constexpr int kWarps = 4;    // each warp owns 16 query rows
constexpr int kThreads = kWarps * 32;
constexpr int kPad = 8;  // bf16 elements appended to every shared row (16 bytes)

template <int DK, int DV>
struct FlashShape {
  static_assert(DK % 16 == 0 && DV % 16 == 0, "head widths must be multiples of 16 (mma k, ldmatrix.x4)");
  static constexpr int kQStride = DK + kPad;  // elements per shared row of Q and K
  static constexpr int kVStride = DV + kPad;
  // Q fragments live in registers (DK/4 registers per thread) unless that would crowd out the
  // output accumulator (DV/2 registers): for dk = 256 they are re-read from shared memory per tile.
  static constexpr bool kQInRegisters = DK <= 192;
  static constexpr int kQElems = kBlockM * kQStride;
  static constexpr int kKElems = kBlockN * kQStride;  // one K buffer
  static constexpr int kVElems = kBlockN * kVStride;  // one V buffer
  static constexpr size_t kSmemBytes = sizeof(bf16) * (kQElems + 2 * kKElems + 2 * kVElems);
};

struct FlashParams {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  bf16* out;
  int t, s, heads, kv_heads, group;  // group = heads / kv_heads
  float scale_log2;                  // scale · log2(e)
  float* lse;                        // [heads, t] natural-log log-sum-exp, or null: not wanted
};

// ---- PTX wrappers: mma_ptx.cuh ----------------------------------------------------------------
using namespace ptx;

// exp2_approx, pack_bf16: mma_ptx.cuh.

// Rows [0, 64) x WIDTH of a tile from global (row r at src + r * row_stride) into shared rows of
// WIDTH + kPad elements; rows >= rows_valid are zero (so masked keys multiply zeros, never NaN
// garbage, and padding query rows have finite scores). All 128 threads issue 16-byte copies,
// consecutive threads on consecutive chunks of a row (coalesced).
template <int WIDTH>
__device__ __forceinline__ void load_tile_async(bf16* dst, const bf16* src, int64_t row_stride,
                                                int rows_valid) {
  constexpr int kChunksPerRow = WIDTH / 8;
  constexpr int kChunks = kBlockN * kChunksPerRow;  // kBlockM == kBlockN
  static_assert(kChunks % kThreads == 0, "every thread copies the same number of chunks");
#pragma unroll
  for (int i = 0; i < kChunks / kThreads; ++i) {
    const int chunk = i * kThreads + static_cast<int>(threadIdx.x);
    const int row = chunk / kChunksPerRow, col = (chunk % kChunksPerRow) * 8;
    const bool valid = row < rows_valid;
    const bf16* from = valid ? src + row * row_stride + col : src;  // src: row 0, always readable
    cp_async_16(shared_address(dst + row * (WIDTH + kPad) + col), from, valid);
  }
}

// ---- the kernel --------------------------------------------------------------------------------

template <int DK, int DV>
__global__ void __launch_bounds__(kThreads, 1)
    flash_attention_kernel(const FlashParams p) {
  using Shape = FlashShape<DK, DV>;
  constexpr int kQS = Shape::kQStride, kVS = Shape::kVStride;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* const q_s = reinterpret_cast<bf16*>(smem_raw);  // [64][kQS]
  bf16* const k_s = q_s + Shape::kQElems;                // [2][64][kQS]
  bf16* const v_s = k_s + 2 * Shape::kKElems;            // [2][64][kVS]

  const int h = static_cast<int>(blockIdx.x);
  const int m0 = static_cast<int>(gridDim.y - 1 - blockIdx.y) * kBlockM;  // first query row
  const int kvh = h / p.group;
  const int offset = p.s - p.t;  // query i sees keys [0, offset + i]
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane >> 2, c = lane & 3;  // mma fragment coordinates (see mma_bf16_16x8x16)

  // Keys [0, key_end) are visible to some real row of this tile.
  const int last_row = min(m0 + kBlockM, p.t) - 1;
  const int key_end = offset + last_row + 1;
  const int n_tiles = (key_end + kBlockN - 1) / kBlockN;

  const int64_t q_row_stride = int64_t{p.heads} * DK;
  const int64_t k_row_stride = int64_t{p.kv_heads} * DK;
  const int64_t v_row_stride = int64_t{p.kv_heads} * DV;
  const bf16* const k_head = p.k + int64_t{kvh} * DK;  // key 0 of this kv head
  const bf16* const v_head = p.v + int64_t{kvh} * DV;
  auto load_kv = [&](int tile, int buffer) {
    const int n0 = tile * kBlockN;
    load_tile_async<DK>(k_s + buffer * Shape::kKElems, k_head + n0 * k_row_stride, k_row_stride,
                        p.s - n0);
    load_tile_async<DV>(v_s + buffer * Shape::kVElems, v_head + n0 * v_row_stride, v_row_stride,
                        p.s - n0);
  };

  // Group 0: the Q tile and K/V tile 0.
  load_tile_async<DK>(q_s, p.q + int64_t{m0} * q_row_stride + int64_t{h} * DK, q_row_stride,
                      p.t - m0);
  load_kv(0, 0);
  cp_async_commit();

  // This warp's rows: warp_row0 + g (fragment registers 0, 1) and warp_row0 + g + 8 (2, 3).
  const int warp_row0 = m0 + warp * 16;
  const bool warp_has_rows = warp_row0 < p.t;
  const int last_key[2] = {offset + warp_row0 + g, offset + warp_row0 + g + 8};

  float o[DV / 8][4];  // O: 16 x DV per warp, d-tile j holds cols 8j + 2c, +1 of rows g, g+8
#pragma unroll
  for (int j = 0; j < DV / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};  // log2 units
  float row_sum[2] = {0.0f, 0.0f};            // this thread's part; the quad sums at the end
  uint32_t q_frag[Shape::kQInRegisters ? DK / 16 : 1][4];

  // Shared row/column this lane addresses for ldmatrix.x4 (see the fragment layout above):
  //   Q (A operand, 16 rows x 16 cols): matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15) in the
  //     order a[0..3]: lane L gives row L % 16, col 8 * (L / 16).
  //   K (B operand of S = Q·Kᵀ, B[d][key] = K[key][d], so K rows are B columns: no transpose):
  //     matrices (keys 0-7, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 0-7), (keys 8-15, d 8-15)
  //     = {b0, b1} of key tile n and {b0, b1} of key tile n + 8: lane L gives key
  //     L % 8 + 8 * (L / 16), col 8 * ((L / 8) % 2).
  //   V (B operand of O = P·V, B[key][d] = V[key][d] with keys along k: transposed load):
  //     matrices (keys 0-7, d 0-7), (keys 8-15, d 0-7), (keys 0-7, d 8-15), (keys 8-15, d 8-15)
  //     = {b0, b1} of d tile n and of d tile n + 8: lane L gives key L % 8 + 8 * ((L / 8) % 2),
  //     col 8 * (L / 16).
  const int q_ld_row = warp * 16 + (lane & 15), q_ld_col = (lane >> 4) * 8;
  const int k_ld_row = (lane & 7) + ((lane >> 4) << 3), k_ld_col = ((lane >> 3) & 1) * 8;
  const int v_ld_row = (lane & 7) + (((lane >> 3) & 1) << 3), v_ld_col = (lane >> 4) * 8;

  for (int tile = 0; tile < n_tiles; ++tile) {
    const int buffer = tile & 1;
    if (tile + 1 < n_tiles) {
      load_kv(tile + 1, buffer ^ 1);  // that buffer was released by the trailing barrier
      cp_async_commit();
      cp_async_wait<1>();  // everything but tile + 1 has landed
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    if constexpr (Shape::kQInRegisters) {
      if (tile == 0) {
#pragma unroll
        for (int kk = 0; kk < DK / 16; ++kk)
          ldmatrix_x4(q_frag[kk], shared_address(q_s + q_ld_row * kQS + kk * 16 + q_ld_col));
      }
    }

    const int n0 = tile * kBlockN;
    // Warp-uniform: skip warps without real rows and tiles past the warp's last visible key.
    if (warp_has_rows && n0 <= offset + warp_row0 + 15) {
      const bf16* const k_tile = k_s + buffer * Shape::kKElems;
      const bf16* const v_tile = v_s + buffer * Shape::kVElems;

      // S = Q·Kᵀ: 16 x 64 per warp; s[j] holds keys n0 + 8j + 2c, +1 of rows g, g+8.
      float s[kBlockN / 8][4];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < DK / 16; ++kk) {
        uint32_t a[4];
        if constexpr (Shape::kQInRegisters) {
          a[0] = q_frag[kk][0], a[1] = q_frag[kk][1], a[2] = q_frag[kk][2], a[3] = q_frag[kk][3];
        } else {
          ldmatrix_x4(a, shared_address(q_s + q_ld_row * kQS + kk * 16 + q_ld_col));
        }
#pragma unroll
        for (int nn = 0; nn < kBlockN / 16; ++nn) {
          uint32_t b[4];
          ldmatrix_x4(b, shared_address(k_tile + (nn * 16 + k_ld_row) * kQS + kk * 16 + k_ld_col));
          mma_bf16_16x8x16(s[2 * nn], a, b[0], b[1]);
          mma_bf16_16x8x16(s[2 * nn + 1], a, b[2], b[3]);
        }
      }

      // To log2 units; mask keys past a row's causal limit or past s (only on boundary tiles).
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] *= p.scale_log2;
      const bool needs_mask = n0 + kBlockN - 1 > offset + warp_row0 || n0 + kBlockN > p.s;
      if (needs_mask) {
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = n0 + 8 * j + 2 * c + (e & 1);
            if (key > last_key[e >> 1] || key >= p.s) s[j][e] = -INFINITY;
          }
      }

      // Online softmax. Each row lives in the 4 lanes of a quad (same g): reduce with xor 1, 2.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_max[r];
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // A row with nothing visible yet keeps m = -inf; subtract 0 then so exp2 gives 0, not NaN.
        const float base = mx == -INFINITY ? 0.0f : mx;
        const float alpha = exp2_approx(row_max[r] - base);  // 0 on the first visible tile
        row_max[r] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kBlockN / 8; ++j) {
          s[j][2 * r] = exp2_approx(s[j][2 * r] - base);
          s[j][2 * r + 1] = exp2_approx(s[j][2 * r + 1] - base);
          sum += s[j][2 * r] + s[j][2 * r + 1];
        }
        row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
        for (int j = 0; j < DV / 8; ++j) {
          o[j][2 * r] *= alpha;
          o[j][2 * r + 1] *= alpha;
        }
      }

      // O += P·V. The S accumulator layout of key tiles 2kk, 2kk+1 is exactly the A fragment of
      // keys 16kk..16kk+15: a[0] = (g, 2c) of tile 2kk, a[1] = (g+8, 2c) of tile 2kk,
      // a[2] = (g, 2c) of tile 2kk+1 (= col 8 + 2c), a[3] = (g+8, 2c) of tile 2kk+1.
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const uint32_t a[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                               pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                               pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                               pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dn = 0; dn < DV / 16; ++dn) {
          uint32_t b[4];
          ldmatrix_x4_trans(b,
                            shared_address(v_tile + (kk * 16 + v_ld_row) * kVS + dn * 16 + v_ld_col));
          mma_bf16_16x8x16(o[2 * dn], a, b[0], b[1]);
          mma_bf16_16x8x16(o[2 * dn + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // every warp is done with `buffer` before the next iteration refills it
  }

  if (!warp_has_rows) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = warp_row0 + g + 8 * r;
    if (row >= p.t) continue;
    const float inv = 1.0f / sum;  // sum >= 1: the row's max contributes exp2(0)
    // Natural log: (m + log2 Σ 2^(x − m)) · ln 2, once per row (lane c == 0 of the quad).
    if (p.lse != nullptr && c == 0)
      p.lse[int64_t{h} * p.t + row] = (row_max[r] + log2f(sum)) * 0.6931471805599453f;
    bf16* const out_row = p.out + (int64_t{row} * p.heads + h) * DV;
#pragma unroll
    for (int j = 0; j < DV / 8; ++j) {
      const uint32_t pair = pack_bf16(o[j][2 * r] * inv, o[j][2 * r + 1] * inv);
      *reinterpret_cast<uint32_t*>(out_row + 8 * j + 2 * c) = pair;
    }
  }
}

template <int DK, int DV>
void launch(const FlashParams& params, int query_tiles, cudaStream_t stream) {
  constexpr size_t kSmem = FlashShape<DK, DV>::kSmemBytes;
  // Above 48 KiB of dynamic shared memory needs an explicit opt-in (per kernel, cheap to repeat).
  REFINERY_CUDA_CHECK(cudaFuncSetAttribute(flash_attention_kernel<DK, DV>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(kSmem)));
  const dim3 grid(static_cast<unsigned>(params.heads), static_cast<unsigned>(query_tiles));
  flash_attention_kernel<DK, DV><<<grid, kThreads, kSmem, stream>>>(params);
  REFINERY_CUDA_CHECK_LAUNCH("flash_attention");
}

// The Hopper kernel (flash_attention_sm90a.cu) is the default where the device (compute 9.0) and
// the widths allow it: validated on an H100 on 2026-11-27 (flash_attention_gpu_test.cpp, memcheck
// and racecheck clean; 355 / 349 TFLOP/s on MLA 192/128 and GQA 128 at L 2048 vs 201 / 238 for
// the mma.sync kernel). REFINERY_ATTN_KERNEL=mma forces the old kernel.
constexpr bool kWgmmaByDefault = true;

enum class KernelChoice { kAuto, kMma, kWgmma };

// REFINERY_ATTN_KERNEL (read per call, ~100 ns next to a launch): unset, "" or "auto", "mma", "wgmma".
KernelChoice kernel_choice() {
  const char* v = std::getenv("REFINERY_ATTN_KERNEL");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0) return KernelChoice::kAuto;
  if (std::strcmp(v, "mma") == 0) return KernelChoice::kMma;
  if (std::strcmp(v, "wgmma") == 0) return KernelChoice::kWgmma;
  throw_user_error("environment variable REFINERY_ATTN_KERNEL is \"", v,
                   "\"; expected \"auto\", \"mma\" (the mma.sync flash attention kernel) or "
                   "\"wgmma\" (the Hopper kernel); unset it for the default");
}

}  // namespace

bool flash_attention_supports(int64_t dk, int64_t dv) {
  if (dk == dv) return dk == 16 || dk == 32 || dk == 64 || dk == 96 || dk == 128 || dk == 256;
  return dk == 192 && dv == 128;
}

void flash_attention_bf16(const FlashAttentionArgs& a, void* stream) {
  REFINERY_CHECK(flash_attention_supports(a.dk, a.dv), "flash_attention: head widths dk ", a.dk,
                 ", dv ", a.dv, " are not supported (ask flash_attention_supports first)");
  REFINERY_CHECK(a.t >= 0 && a.s >= a.t && a.heads > 0 && a.kv_heads > 0 &&
                     a.heads % a.kv_heads == 0,
                 "flash_attention: inconsistent sizes t ", a.t, ", s ", a.s, ", heads ", a.heads,
                 ", kv_heads ", a.kv_heads);
  REFINERY_CHECK(a.s < (int64_t{1} << 31) - kBlockN && a.heads < (int64_t{1} << 31),
                 "flash_attention: s ", a.s, " or heads ", a.heads, " exceed the kernel's int range");
  const KernelChoice choice = kernel_choice();
  if (choice == KernelChoice::kWgmma) {
    if (!flash_attention_wgmma_available())
      throw_user_error("REFINERY_ATTN_KERNEL=wgmma: the Hopper attention kernel needs a compute 9.0 "
                       "GPU (H100/H200); unset REFINERY_ATTN_KERNEL or set it to mma");
    if (!flash_attention_wgmma_supports(a))
      throw_user_error("REFINERY_ATTN_KERNEL=wgmma: the Hopper attention kernel does not support "
                       "head widths dk ", a.dk, ", dv ", a.dv, " (it has (64, 64), (128, 128) and "
                       "(192, 128)); unset REFINERY_ATTN_KERNEL or set it to mma");
    return flash_attention_wgmma_bf16(a, stream);
  }
  if (kWgmmaByDefault && choice == KernelChoice::kAuto && flash_attention_wgmma_supports(a) &&
      flash_attention_wgmma_available())
    return flash_attention_wgmma_bf16(a, stream);
  if (a.t == 0) return;
  const int64_t query_tiles = (a.t + kBlockM - 1) / kBlockM;
  REFINERY_CHECK(query_tiles <= 65535, "flash_attention: ", a.t, " queries exceed the grid limit");
  REFINERY_CHECK(aligned16(a.q) && aligned16(a.k) && aligned16(a.v) && aligned16(a.out),
                 "flash_attention: q, k, v and out must be 16-byte aligned (cp.async)");
  const FlashParams params{static_cast<const bf16*>(a.q),
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
  if (a.dk == 16) return launch<16, 16>(params, tiles, st);
  if (a.dk == 32) return launch<32, 32>(params, tiles, st);
  if (a.dk == 64) return launch<64, 64>(params, tiles, st);
  if (a.dk == 96) return launch<96, 96>(params, tiles, st);
  if (a.dk == 128) return launch<128, 128>(params, tiles, st);
  if (a.dk == 192) return launch<192, 128>(params, tiles, st);
  return launch<256, 256>(params, tiles, st);
}

}  // namespace refinery::backend::cuda
