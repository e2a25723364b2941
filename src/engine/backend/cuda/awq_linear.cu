// AutoAWQ (W4/W3/W8, group-quantized) linear layers on the GPU; see awq_linear.hpp for the format.
//
// Layouts (awq_linear.hpp): awq_device_matrix gives a matrix the tiled layout when it can
// (awq_device_layout), rewriting the device copy: the backend's cached copy of a read-only host
// tensor in place, once (a registry of tiled device storages, weak pointers, tells a copy already
// rewritten from a new one at a reused address); a per-call copy or the caller's device tensor
// into a new tensor. Repack kernels: one thread per destination word / byte / f16, gathering from
// the AutoAWQ tensors (a one-time pass). The tiled GEMV is awq_gemv.cu's; the tiled dequantize is
// below (awq_dequant_tiled_kernel).
//
// GEMV (decode, rows 1..8) on the AutoAWQ layout, bandwidth-bound. What follows is variant 0
// ("base"); awq_gemv.cu holds the other variants (kAwqGemvAutoAwqVariant runs for AutoAWQ-layout
// matrices by default, REFINERY_AWQ_GEMV overrides).
// Base: every qweight int32 is read exactly once, by one
// kernel (no second pass, no atomics). It needs thread-block clusters (sm_90); elsewhere
// awq_gemv_supports is false and linear() takes the dequantize + GEMM path.
//   Column tiles: lane l of every warp of the blocks of tile t owns qweight column word 32·t + l,
//   i.e. output columns [word·pack, word·pack + pack); a warp's 32 lanes read 32 consecutive int32
//   of one input row (one 128-byte line, coalesced).
//   K is cut into tasks of rt <= 32 consecutive input rows inside one group (rt: the largest
//   divisor of the group size up to 32). The S·W warps of a tile (a cluster of S <= 8 blocks of W
//   warps, grid = tiles·S blocks) take the tasks round-robin: warp g = rank·W + warp owns tasks
//   g, g + S·W, .... Per task a thread issues all its loads at once: rt qweight words (streaming,
//   32 in flight for 1-2 token rows, else 16), its zero word and `pack` scales, and lane l loads
//   x[r, c0 + l] (shuffled to all lanes row by row). A word is unpacked without conversions:
//   4-bit, nibble i of the low / high half-word masked in place under the exponent of 2^23 gives
//   the float 2^23 + code·16^(i%4) (one LOP3); 8-bit, one byte permute gives 2^23 + code. The zero
//   word is unpacked the same way, so code - zero is one exact f32 subtraction (scaled by 16^(i%4),
//   a power of two folded into the scale), then part[r][i] += (code - zero)·x[r, c] (f32 FMA; the
//   product is exact). At the task's end acc[r][i] += scale·16^-(i%4)·part[r][i].
//   Reduction: each warp writes acc to shared memory [W, rows, pack, 32]; after a cluster barrier
//   block rank q of the tile sums a 1/S slice of the tile's outputs over (rank, warp) in that fixed
//   order, reading the other blocks' shared memory (DSMEM), and writes y; a second barrier keeps
//   the shared memory alive until all ranks have read it. The result is deterministic on a device.
//   Plan (per device and shape, cached): the fewest tasks per warp k (the serial chain of memory
//   round trips) such that all tiles' clusters are resident at once (cudaOccupancyMaxActiveClusters),
//   then the smallest S; T = ceil(tasks / k) warps per tile, S = ceil(T / W_max), W = ceil(T / S).
//   Shapes too wide for one wave even at T = 1 run S = 1, W = W_max blocks in several waves.
//   Registers (ptxas, sm_90, no spills): 80 at 1 row (25 warps an SM), 128 at 2, up to 255 above;
//   shared memory W·rows·pack·128 bytes (<= 64 KiB). Per 4-bit word at 1 row: 1 load, 1 shuffle,
//   1 shift + 8 LOP3, 8 FADD, 8 FFMA.
// Dequantize (prefill and MoE stacks): a block stages a tile of 64 input rows x 32 words of
//   qweight in shared memory (coalesced loads), then writes the tile's 32·pack output rows of W as
//   bf16, 8 consecutive inputs (one 16-byte store) per thread and step, 8 threads per output row
//   (128 contiguous bytes). Sizes with in or group_size not a multiple of 8 take the same kernel
//   with element-wise stores.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "engine/backend/cuda/awq_gemv.cuh"
#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

// Input rows per GEMV task at most: one x value per lane, shuffled to the warp.
constexpr int kTaskRows = 32;
// Blocks per cluster at most (the portable cluster size).
constexpr int kMaxCluster = 8;
// Warps per GEMV block at most (the reduction buffer [W, rows, 8, 32] f32 stays <= 64 KiB) and
// registers per thread (ptxas, sm_90, no spills: 1 row 80, so 3 blocks of 8 warps share an SM;
// 2 rows 128 (16 warps); 3..8 rows up to 255 for the 2 x rows x 8 accumulators).
__host__ __device__ constexpr int gemv_max_warps(int rows) { return rows <= 2 ? 16 : 8; }
__host__ __device__ constexpr int gemv_max_registers(int rows) {
  return rows == 1 ? 80 : rows == 2 ? 128 : 255;
}
// qweight words loaded per batch (all in flight at once): a whole task for 1-2 token rows.
__host__ __device__ constexpr int gemv_batch(int rows) { return rows <= 2 ? 32 : 16; }
constexpr int kTileInputs = 64, kTileWords = 32, kDequantThreads = 256;
// Rows of W per dequantization chunk in linear(): at most 16 Mi bf16 values of scratch.
constexpr int64_t kScratchElements = int64_t{1} << 24;

// Position (nibble index) of output offset o inside a 4-bit word: AutoAWQ packs output offsets
// [0,2,4,6,1,3,5,7] into nibbles 0..7, so offset o sits in nibble o/2 (o even) or o/2 + 4 (odd).
__host__ __device__ constexpr int nibble_of(int o) { return o % 2 == 0 ? o / 2 : o / 2 + 4; }
// The inverse: output offset of element i of a word (nibble i; 8-bit: byte i).
template <int BITS>
__host__ __device__ constexpr int offset_of(int i) {
  return BITS == 8 ? i : (i < 4 ? 2 * i : 2 * (i - 4) + 1);
}

// 2^23 + the code of output offset o of a packed word, as a float (exact: the code fills the
// low mantissa bits). Subtracting two of these gives code - zero exactly.
template <int BITS>
__device__ __forceinline__ float biased_code(uint32_t word, int o) {
  const uint32_t code = BITS == 8 ? (word >> (8 * o)) & 0xFFu : (word >> (4 * nibble_of(o))) & 0xFu;
  return __uint_as_float(0x4B000000u | code);
}

// (a & mask) | b as one LOP3 (the compiler otherwise emits an AND and an OR).
__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t b) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(b));
  return d;
}

// All codes of a word for the GEMV, v[i] for element i (nibble / byte i, not the output offset):
// 4-bit, v[i] = 2^23 + code_i · 16^(i % 4): nibble i of the low (i < 4) or high half-word kept in
// place under the exponent of 2^23 (bits 0..15 of the mantissa; one LOP3 each); 8-bit,
// v[i] = 2^23 + code_i (a byte permute puts byte i under the exponent). Exact floats in
// [2^23, 2^24), so the difference of two is exact.
template <int BITS>
__device__ __forceinline__ void unpack_gemv(uint32_t word, float (&v)[BITS == 8 ? 4 : 8]) {
  constexpr uint32_t kExponent = 0x4B000000u;
  if constexpr (BITS == 8) {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = __uint_as_float(__byte_perm(word, kExponent, 0x7440u | i));
  } else {
    const uint32_t high = word >> 16;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[i] = __uint_as_float(and_or(word, 0xFu << (4 * i), kExponent));
      v[4 + i] = __uint_as_float(and_or(high, 0xFu << (4 * i), kExponent));
    }
  }
}

// 16^-(i % 4) for 4-bit element i (undoes unpack_gemv's place value), 1 for 8-bit.
template <int BITS>
__device__ __forceinline__ constexpr float place_inverse(int i) {
  return BITS == 8 ? 1.0f : (i % 4 == 0 ? 1.0f : i % 4 == 1 ? 0x1p-4f : i % 4 == 2 ? 0x1p-8f : 0x1p-12f);
}

struct GemvParams {
  const uint32_t* qweight;  // [in, words]
  const uint32_t* qzeros;   // [in / group_size, words]
  const __half* scales;     // [in / group_size, out]
  const uint16_t* x;        // bf16 [rows, in]
  int64_t words, out, in, group_size;
  int64_t n_tasks;  // in / rt
  int rt;           // input rows per task (divides group_size, <= kTaskRows)
  int cluster;      // S: blocks per column tile (the cluster size)
  void* y;          // [rows, out]
  bool y_f32;
};

// grid (tiles · S), block W·32 threads, cluster (S, 1, 1), dynamic shared memory W·ROWS·pack·32
// floats. FULL: rt == kTaskRows (groups that are multiples of 32), no per-row guards.
template <int ROWS, int BITS, bool FULL>
__global__ void __maxnreg__(gemv_max_registers(ROWS)) awq_gemv_kernel(const GemvParams p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the host never launches this (gemv_kernel_usable)
#else
  namespace cg = cooperative_groups;
  constexpr int kPack = BITS == 8 ? 4 : 8;
  constexpr int kBatch = gemv_batch(ROWS);
  constexpr int kPerTile = ROWS * kPack * 32;  // outputs of a tile, as [ROWS, pack, 32 lanes]
  extern __shared__ float red[];               // [W, ROWS, pack, 32]
  const cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t tile = blockIdx.x / p.cluster;
  const int64_t word = tile * 32 + lane;
  const bool valid = word < p.words;  // lanes past the last word compute zeros
  const int rt = FULL ? kTaskRows : p.rt;

  float acc[ROWS][kPack];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int i = 0; i < kPack; ++i) acc[r][i] = 0.0f;
  for (int64_t task = int64_t{rank} * warps + warp; task < p.n_tasks;
       task += int64_t{p.cluster} * warps) {
    const int64_t c0 = task * rt, group = c0 / p.group_size;
    // Loads that do not depend on each other, issued together with the first qweight batch.
    float xv[ROWS];  // lane l: x[r, c0 + l]
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
      xv[r] = lane < rt ? __uint_as_float(uint32_t{__ldg(p.x + r * p.in + c0 + lane)} << 16) : 0.0f;
    const uint32_t zword = valid ? __ldg(p.qzeros + group * p.words + word) : 0u;
    __half scale_h[kPack];
#pragma unroll
    for (int i = 0; i < kPack; ++i)
      scale_h[i] = valid ? __ldg(p.scales + group * p.out + word * kPack + offset_of<BITS>(i))
                         : __float2half(0.0f);
    const uint32_t* q_ptr = p.qweight + c0 * p.words + word;
    float part[ROWS][kPack];
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int i = 0; i < kPack; ++i) part[r][i] = 0.0f;
    float zero[kPack];
    unpack_gemv<BITS>(zword, zero);
#pragma unroll
    for (int b = 0; b < kTaskRows; b += kBatch) {
      if (!FULL && b >= rt) break;
      uint32_t q[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u)  // streaming loads: qweight is read once
        q[u] = valid && (FULL || b + u < rt) ? __ldcs(q_ptr + (b + u) * p.words) : 0u;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (FULL || b + u < rt) {  // warp-uniform: the shuffles see every lane
          float xr[ROWS];
#pragma unroll
          for (int r = 0; r < ROWS; ++r) xr[r] = __shfl_sync(0xFFFFFFFFu, xv[r], b + u);
          float code[kPack];
          unpack_gemv<BITS>(q[u], code);
#pragma unroll
          for (int i = 0; i < kPack; ++i) {
            const float d = code[i] - zero[i];  // (code - zero)·16^(i%4), exact
#pragma unroll
            for (int r = 0; r < ROWS; ++r) part[r][i] = fmaf(d, xr[r], part[r][i]);
          }
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kPack; ++i) {
      const float s = __half2float(scale_h[i]) * place_inverse<BITS>(i);  // exact
#pragma unroll
      for (int r = 0; r < ROWS; ++r) acc[r][i] = fmaf(s, part[r][i], acc[r][i]);
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int i = 0; i < kPack; ++i)
      red[((warp * ROWS + r) * kPack + offset_of<BITS>(i)) * 32 + lane] = acc[r][i];
  cluster.sync();  // every warp of every rank has written its sums
  // Element e = (r·pack + o)·32 + l of the tile: Σ over ranks, then warps, in order.
  for (int e = rank * blockDim.x + threadIdx.x; e < kPerTile; e += p.cluster * blockDim.x) {
    float sum = 0.0f;
    for (int q = 0; q < p.cluster; ++q) {
      const float* src = cluster.map_shared_rank(red, q);
      for (int w = 0; w < warps; ++w) sum += src[w * kPerTile + e];
    }
    const int l = e % 32, o = (e / 32) % kPack, r = e / (32 * kPack);
    const int64_t wi = tile * 32 + l;
    if (wi >= p.words) continue;
    const int64_t col = wi * kPack + o;
    if (p.y_f32)
      static_cast<float*>(p.y)[r * p.out + col] = sum;
    else
      static_cast<__nv_bfloat16*>(p.y)[r * p.out + col] = __float2bfloat16_rn(sum);
  }
  cluster.sync();  // no block leaves while another may still read its shared memory
#endif
}

struct DequantParams {
  const uint32_t* qweight;
  const uint32_t* qzeros;
  const __half* scales;
  int64_t words, out, in, group_size;
  int64_t word_begin, word_count;
  __nv_bfloat16* dst;  // [word_count * pack, in]
};

// grid (ceil(in / 64), ceil(word_count / 32)), kDequantThreads threads. ALIGNED: in and
// group_size multiples of 8 and dst 16-byte aligned, so 8 consecutive inputs share a group and
// form one aligned 16-byte store.
template <int BITS, bool ALIGNED>
__global__ void __launch_bounds__(kDequantThreads) awq_dequant_kernel(const DequantParams p) {
  constexpr int kPack = BITS == 8 ? 4 : 8;
  constexpr int kChunks = kTileInputs / 8;
  __shared__ uint32_t tile[kTileInputs][kTileWords + 1];
  const int64_t c0 = int64_t{blockIdx.x} * kTileInputs;
  const int64_t w0 = int64_t{blockIdx.y} * kTileWords;  // relative to word_begin
  for (int i = threadIdx.x; i < kTileInputs * kTileWords; i += kDequantThreads) {
    const int cl = i / kTileWords, kl = i % kTileWords;
    const int64_t c = c0 + cl, lw = w0 + kl;
    tile[cl][kl] =
        c < p.in && lw < p.word_count ? __ldcs(p.qweight + c * p.words + p.word_begin + lw) : 0u;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTileWords * kPack * kChunks; i += kDequantThreads) {
    const int row = i / kChunks, chunk = i % kChunks;  // row: output row within the tile
    const int kl = row / kPack, o = row % kPack;
    const int64_t lw = w0 + kl, cb = c0 + int64_t{chunk} * 8;
    if (lw >= p.word_count || cb >= p.in) continue;
    const int64_t word = p.word_begin + lw;
    const int64_t r = word * kPack + o;  // output row of W
    __nv_bfloat16* dst = p.dst + (lw * kPack + o) * p.in + cb;
    if constexpr (ALIGNED) {
      const int64_t group = cb / p.group_size;
      const float zero = biased_code<BITS>(p.qzeros[group * p.words + word], o);
      const float scale = __half2float(p.scales[group * p.out + r]);
      __align__(16) __nv_bfloat16 v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j)
        v[j] = __float2bfloat16_rn((biased_code<BITS>(tile[chunk * 8 + j][kl], o) - zero) * scale);
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
    } else {
      for (int j = 0; j < 8 && cb + j < p.in; ++j) {
        const int64_t group = (cb + j) / p.group_size;
        const float zero = biased_code<BITS>(p.qzeros[group * p.words + word], o);
        const float scale = __half2float(p.scales[group * p.out + r]);
        dst[j] =
            __float2bfloat16_rn((biased_code<BITS>(tile[chunk * 8 + j][kl], o) - zero) * scale);
      }
    }
  }
}

// ---- the tiled layout (awq_linear.hpp): repack at upload, dequantize for prefill ----

constexpr int kRepackThreads = 256;

unsigned repack_blocks(int64_t n) {
  return static_cast<unsigned>(std::min<int64_t>((n + kRepackThreads - 1) / kRepackThreads, 65535 * 16));
}

// AutoAWQ 4-bit code of output o in row `row` of a packed [rows, words] int32 tensor.
__device__ __forceinline__ uint32_t autoawq_code(const uint32_t* t, int64_t row, int64_t words,
                                                 int64_t o) {
  return (__ldg(t + row * words + o / 8) >> (4 * awq_autoawq_nibble(static_cast<int>(o % 8)))) & 15u;
}

// dst: tiled qweight (n = in · out / 8 words), word i gathered from 8 codes of src [in, words].
__global__ void tile_qweight_kernel(const uint32_t* src, uint32_t* dst, int64_t in, int64_t words,
                                    int64_t n) {
  const int64_t chunks = in / 64;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int s = static_cast<int>(i % 4), lane = static_cast<int>((i / 4) % 32);
    const int64_t tile = i / 128 / chunks, chunk = i / 128 % chunks;
    uint32_t word = 0;
#pragma unroll
    for (int nib = 0; nib < 8; ++nib) {
      const int64_t o = tile * 16 + lane / 4 + 8 * awq_tiled_half_of(nib);
      const int64_t k = chunk * 64 + 16 * (lane % 4) + 4 * s + awq_tiled_input_of(nib);
      word |= autoawq_code(src, k, words, o) << (4 * nib);
    }
    dst[i] = word;
  }
}

// dst: tiled zeros (n = groups · out / 2 bytes) from src qzeros [groups, words].
__global__ void tile_zeros_kernel(const uint32_t* src, uint8_t* dst, int64_t groups, int64_t words,
                                  int64_t n) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t tile = i / 8 / groups, group = i / 8 % groups;
    const int64_t o = tile * 16 + i % 8;
    dst[i] = static_cast<uint8_t>(autoawq_code(src, group, words, o) |
                                  autoawq_code(src, group, words, o + 8) << 4);
  }
}

// dst: tiled scales (n = groups · out f16) from src scales [groups, out].
__global__ void tile_scales_kernel(const uint16_t* src, uint16_t* dst, int64_t groups, int64_t out,
                                   int64_t n) {
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t meta = i / 2, tile = meta / 8 / groups, group = meta / 8 % groups;
    const int64_t o = tile * 16 + meta % 8 + 8 * (i % 2);
    dst[i] = src[group * out + o];
  }
}

struct TiledDequantParams {
  const uint32_t* qweight;  // tiled
  const uint8_t* zeros;
  const __half* scales;
  int64_t in, groups, group_size;
  int64_t o_begin, n_out;
  __nv_bfloat16* dst;  // [n_out, in]
};

// One thread per (output row, 8 consecutive inputs): the 2 tiled words that hold them (8 bytes of
// one lane's slice), one 16-byte store (ALIGNED: dst 16-byte aligned) or 8 2-byte stores.
// Consecutive threads take consecutive inputs of a row: a warp writes 512 contiguous bytes and
// reads 64-byte runs of 4 chunks. The values are those of the AutoAWQ-layout kernel, bitwise.
template <bool ALIGNED>
__global__ void __launch_bounds__(kDequantThreads)
    awq_dequant_tiled_kernel(const TiledDequantParams p) {
  const int64_t per_row = p.in / 8, n = p.n_out * per_row;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t ol = i / per_row, k = i % per_row * 8, o = p.o_begin + ol;
    const AwqTiledPosition pos = awq_tiled_position(o, k, p.in);  // word s = 0 or 2 of a slice
    const uint2 two = *reinterpret_cast<const uint2*>(p.qweight + pos.word);
    const int h = static_cast<int>((o % 16) / 8);
    const int64_t group = k / p.group_size;
    const float zero = static_cast<float>((p.zeros[awq_tiled_meta(o, group, p.groups)] >> (4 * h)) & 15);
    const float scale = __half2float(p.scales[awq_tiled_scale(o, group, p.groups)]);
    __align__(16) __nv_bfloat16 v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t word = j < 4 ? two.x : two.y;
      const uint32_t code = (word >> (4 * awq_tiled_nibble(j % 4, h))) & 15u;
      v[j] = __float2bfloat16_rn((static_cast<float>(code) - zero) * scale);
    }
    __nv_bfloat16* dst = p.dst + ol * p.in + k;
    if constexpr (ALIGNED) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
    } else {
#pragma unroll
      for (int j = 0; j < 8; ++j) dst[j] = v[j];
    }
  }
}

int pack_of(const AwqDeviceMatrix& w) { return w.bits == 8 ? 4 : 8; }

// Input rows per GEMV task: the largest divisor of the group size up to kTaskRows (a task reads
// its group's zeros and scales once; 32 for every group size that is a multiple of 32).
int task_rows(int64_t group_size) {
  for (int d = kTaskRows; d > 1; --d)
    if (group_size % d == 0) return d;
  return 1;
}

using GemvKernel = void (*)(GemvParams);

template <int ROWS>
GemvKernel gemv_kernel_rows(int bits, bool full) {
  if (bits == 8) return full ? awq_gemv_kernel<ROWS, 8, true> : awq_gemv_kernel<ROWS, 8, false>;
  return full ? awq_gemv_kernel<ROWS, 4, true> : awq_gemv_kernel<ROWS, 4, false>;
}

GemvKernel gemv_kernel(int64_t rows, int bits, bool full) {
  switch (rows) {
    case 1:
      return gemv_kernel_rows<1>(bits, full);
    case 2:
      return gemv_kernel_rows<2>(bits, full);
    case 3:
      return gemv_kernel_rows<3>(bits, full);
    case 4:
      return gemv_kernel_rows<4>(bits, full);
    case 5:
      return gemv_kernel_rows<5>(bits, full);
    case 6:
      return gemv_kernel_rows<6>(bits, full);
    case 7:
      return gemv_kernel_rows<7>(bits, full);
    default:
      return gemv_kernel_rows<8>(bits, full);
  }
}

struct GemvPlan {
  bool usable = false;  // the device and the compiled kernel support clusters (sm_90)
  int rt = 0, cluster = 0, warps = 0;
  int64_t n_tasks = 0, tiles = 0, smem_bytes = 0;
};

std::size_t gemv_smem_bytes(int64_t rows, int bits, int warps) {
  return static_cast<std::size_t>(warps) * rows * (bits == 8 ? 4 : 8) * 32 * sizeof(float);
}

// Clusters of `cluster` blocks of `warps` warps resident on the current device at once.
int max_active_clusters(GemvKernel kernel, int64_t rows, int bits, int cluster, int warps) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(cluster));
  config.blockDim = dim3(static_cast<unsigned>(32 * warps));
  config.dynamicSmemBytes = gemv_smem_bytes(rows, bits, warps);
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
    (void)cudaGetLastError();  // a configuration the device cannot run: none resident
    return 0;
  }
  return clusters;
}

// See the header comment. Queries the device (occupancy), so plans are cached.
GemvPlan make_plan(int device, const AwqDeviceMatrix& w, int64_t rows) {
  GemvPlan p;
  p.rt = task_rows(w.group_size);
  p.n_tasks = w.in / p.rt;
  p.tiles = (w.words + 31) / 32;
  const bool full = p.rt == kTaskRows;
  const GemvKernel kernel = gemv_kernel(rows, w.bits, full);
  // Usable when the device has clusters and the kernel was compiled for sm_90 or later (an older
  // build's body only traps; a failed query means no image for this device).
  int major = 0;
  REFINERY_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 9) return p;
  cudaFuncAttributes attributes = {};
  if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess) {
    (void)cudaGetLastError();
    return p;
  }
  p.usable = attributes.binaryVersion >= 90 && attributes.ptxVersion >= 90;
  if (!p.usable) return p;
  const int max_warps = gemv_max_warps(static_cast<int>(rows));
  REFINERY_CUDA_CHECK(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(gemv_smem_bytes(rows, w.bits, max_warps))));
  std::map<std::pair<int, int>, bool> fits;  // (S, W) -> all tiles' clusters resident at once
  auto fits_one_wave = [&](int s, int wp) {
    const auto key = std::make_pair(s, wp);
    auto it = fits.find(key);
    if (it == fits.end())
      it = fits.emplace(key, max_active_clusters(kernel, rows, w.bits, s, wp) >= p.tiles).first;
    return it->second;
  };
  const int64_t max_tile_warps = std::min<int64_t>(int64_t{kMaxCluster} * max_warps, p.n_tasks);
  for (int64_t k = (p.n_tasks + max_tile_warps - 1) / max_tile_warps; k <= p.n_tasks; ++k) {
    const int64_t t = (p.n_tasks + k - 1) / k;  // warps per tile for k tasks per warp
    if (k > 1 && (p.n_tasks + k - 2) / (k - 1) == t) continue;  // same T as k - 1
    for (int s = 1; s <= kMaxCluster; ++s) {
      const int64_t wp = (t + s - 1) / s;
      if (wp > max_warps) continue;
      if (fits_one_wave(s, static_cast<int>(wp))) {
        p.cluster = s;
        p.warps = static_cast<int>(wp);
        break;
      }
    }
    if (p.cluster > 0) break;
  }
  if (p.cluster == 0) {  // wider than one wave even at one warp per tile: whole-K blocks
    p.cluster = 1;
    p.warps = static_cast<int>(std::min<int64_t>(max_warps, p.n_tasks));
  }
  p.smem_bytes = static_cast<int64_t>(gemv_smem_bytes(rows, w.bits, p.warps));
  return p;
}

// The plan of a matrix shape on the current device, made once per (device, shape, rows).
GemvPlan plan_gemv(const AwqDeviceMatrix& w, int64_t rows) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 6>, GemvPlan> cache;
  int device = 0;
  REFINERY_CUDA_CHECK(cudaGetDevice(&device));
  const std::array<int64_t, 6> key{device, rows, w.bits == 8 ? 8 : 4, w.words, w.in, w.group_size};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make_plan(device, w, rows)).first;
  return it->second;
}

void check_matrix(const AwqDeviceMatrix& w, const char* op) {
  REFINERY_CHECK((w.bits == 3 || w.bits == 4 || w.bits == 8) && w.group_size > 0 && w.in > 0 &&
                     w.out > 0 && w.in % w.group_size == 0 && w.out % pack_of(w) == 0 &&
                     w.words == w.out / pack_of(w),
                 op, ": inconsistent AWQ matrix (bits ", w.bits, ", group ", w.group_size, ", out ",
                 w.out, ", in ", w.in, ", words ", w.words, ")");
  REFINERY_CHECK(w.qweight != nullptr && w.qzeros != nullptr && w.scales != nullptr, op,
                 ": null AWQ tensor pointer");
  REFINERY_CHECK(w.layout == AwqLayout::kAutoAwq ||
                     (awq_tiled_supported(w.bits, w.group_size, w.out, w.in) &&
                      reinterpret_cast<std::uintptr_t>(w.qweight) % 16 == 0 &&
                      reinterpret_cast<std::uintptr_t>(w.scales) % 4 == 0),
                 op, ": a tiled AWQ matrix of unsupported size or alignment (bits ", w.bits,
                 ", group ", w.group_size, ", out ", w.out, ", in ", w.in, ")");
}

}  // namespace

bool awq_gemv_supports(const AwqDeviceMatrix& w, int64_t rows) {
  if (rows < 1 || rows > kAwqGemvMaxRows || w.group_size <= 0 || w.in <= 0 || w.words <= 0 ||
      w.in % w.group_size != 0)
    return false;
  if (w.layout == AwqLayout::kTiled) return awq_gemv_tiled_usable(w);
  const GemvPlan plan = plan_gemv(w, rows);
  return plan.usable && plan.tiles * plan.cluster < (int64_t{1} << 31);
}

int64_t awq_gemv_workspace_floats(const AwqDeviceMatrix& w, int64_t rows) {
  REFINERY_CHECK(awq_gemv_supports(w, rows), "awq_gemv: unsupported sizes");
  return 0;  // the split-K sums are reduced in the kernel (cluster shared memory)
}

void awq_gemv_bf16(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y, bool y_f32,
                   float* /*workspace*/, int64_t /*workspace_floats*/, void* stream) {
  check_matrix(w, "awq_gemv");
  REFINERY_CHECK(awq_gemv_supports(w, rows), "awq_gemv: unsupported sizes: rows ", rows, ", group ",
                 w.group_size, ", in ", w.in, ", out ", w.out);
  REFINERY_CHECK(x != nullptr && y != nullptr, "awq_gemv: null x or y");
  const int variant = awq_gemv_active_variant();
  if (w.layout == AwqLayout::kTiled) {
    awq_gemv_tiled_launch(w, x, rows, y, y_f32, variant, stream);
    return;
  }
  const int v = awq_gemv_variant_is_tiled(variant) ? kAwqGemvAutoAwqVariant : variant;
  if (v != 0 && awq_gemv_v2_launch(w, x, rows, y, y_f32, v, stream)) return;
  awq_gemv_base_launch(w, x, rows, y, y_f32, stream);
}

void awq_gemv_base_launch(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                          bool y_f32, void* stream) {
  const GemvPlan plan = plan_gemv(w, rows);
  const GemvParams params{reinterpret_cast<const uint32_t*>(w.qweight),
                          reinterpret_cast<const uint32_t*>(w.qzeros),
                          static_cast<const __half*>(w.scales),
                          static_cast<const uint16_t*>(x),
                          w.words,
                          w.out,
                          w.in,
                          w.group_size,
                          plan.n_tasks,
                          plan.rt,
                          plan.cluster,
                          y,
                          y_f32};
  launch_clustered(gemv_kernel(rows, w.bits, plan.rt == kTaskRows), params, plan.tiles,
                   plan.cluster, plan.warps, plan.smem_bytes, stream);
  REFINERY_CUDA_CHECK_LAUNCH("awq_gemv");
}

void awq_dequantize_bf16(const AwqDeviceMatrix& w, int64_t word_begin, int64_t word_count,
                         void* out, void* stream) {
  check_matrix(w, "awq_dequantize");
  REFINERY_CHECK(
      word_begin >= 0 && word_count >= 0 && word_begin + word_count <= w.words && out != nullptr,
      "awq_dequantize: words [", word_begin, ", +", word_count, ") of ", w.words);
  if (word_count == 0) return;
  if (w.layout == AwqLayout::kTiled) {
    const TiledDequantParams params{reinterpret_cast<const uint32_t*>(w.qweight),
                                    reinterpret_cast<const uint8_t*>(w.qzeros),
                                    static_cast<const __half*>(w.scales),
                                    w.in,
                                    w.in / w.group_size,
                                    w.group_size,
                                    word_begin * 8,
                                    word_count * 8,
                                    static_cast<__nv_bfloat16*>(out)};
    const int64_t n = word_count * w.in;  // threads: (8 outputs per word) x (in / 8)
    const unsigned blocks = static_cast<unsigned>(
        std::min<int64_t>((n + kDequantThreads - 1) / kDequantThreads, int64_t{1} << 20));
    const auto s = static_cast<cudaStream_t>(stream);
    if (reinterpret_cast<std::uintptr_t>(out) % 16 == 0)
      awq_dequant_tiled_kernel<true><<<blocks, kDequantThreads, 0, s>>>(params);
    else
      awq_dequant_tiled_kernel<false><<<blocks, kDequantThreads, 0, s>>>(params);
    REFINERY_CUDA_CHECK_LAUNCH("awq_dequantize (tiled)");
    return;
  }
  const int64_t tiles_y = (word_count + kTileWords - 1) / kTileWords;
  const int64_t tiles_x = (w.in + kTileInputs - 1) / kTileInputs;
  REFINERY_CHECK(tiles_y <= 65535 && tiles_x < (int64_t{1} << 31),
                 "awq_dequantize: too many words in one call: ", word_count);
  const DequantParams params{reinterpret_cast<const uint32_t*>(w.qweight),
                             reinterpret_cast<const uint32_t*>(w.qzeros),
                             static_cast<const __half*>(w.scales),
                             w.words,
                             w.out,
                             w.in,
                             w.group_size,
                             word_begin,
                             word_count,
                             static_cast<__nv_bfloat16*>(out)};
  const bool aligned =
      w.in % 8 == 0 && w.group_size % 8 == 0 && reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
  const dim3 grid(static_cast<unsigned>(tiles_x), static_cast<unsigned>(tiles_y));
  const auto s = static_cast<cudaStream_t>(stream);
  if (w.bits == 8) {
    if (aligned)
      awq_dequant_kernel<8, true><<<grid, kDequantThreads, 0, s>>>(params);
    else
      awq_dequant_kernel<8, false><<<grid, kDequantThreads, 0, s>>>(params);
  } else {
    if (aligned)
      awq_dequant_kernel<4, true><<<grid, kDequantThreads, 0, s>>>(params);
    else
      awq_dequant_kernel<4, false><<<grid, kDequantThreads, 0, s>>>(params);
  }
  REFINERY_CUDA_CHECK_LAUNCH("awq_dequantize");
}

AwqLayout awq_device_layout(int bits, int64_t group_size, int64_t out, int64_t in) {
  return awq_tiled_supported(bits, group_size, out, in) &&
                 awq_gemv_variant_is_tiled(awq_gemv_active_variant())
             ? AwqLayout::kTiled
             : AwqLayout::kAutoAwq;
}

namespace {

// The three tiled tensors, each on its own (awq_device_matrix repacks them independently).
void tile_qweight(const AwqDeviceMatrix& m, const void* src, void* dst, cudaStream_t s) {
  const int64_t n = m.in * m.words;
  tile_qweight_kernel<<<repack_blocks(n), kRepackThreads, 0, s>>>(
      static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), m.in, m.words, n);
  REFINERY_CUDA_CHECK_LAUNCH("awq repack (qweight)");
}
void tile_zeros(const AwqDeviceMatrix& m, const void* src, void* dst, cudaStream_t s) {
  const int64_t groups = m.in / m.group_size, n = groups * m.out / 2;
  tile_zeros_kernel<<<repack_blocks(n), kRepackThreads, 0, s>>>(
      static_cast<const uint32_t*>(src), static_cast<uint8_t*>(dst), groups, m.words, n);
  REFINERY_CUDA_CHECK_LAUNCH("awq repack (qzeros)");
}
void tile_scales(const AwqDeviceMatrix& m, const void* src, void* dst, cudaStream_t s) {
  const int64_t groups = m.in / m.group_size, n = groups * m.out;
  tile_scales_kernel<<<repack_blocks(n), kRepackThreads, 0, s>>>(
      static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), groups, m.out, n);
  REFINERY_CUDA_CHECK_LAUNCH("awq repack (scales)");
}

// Device storages that hold the tiled layout already: the backend's cached copies of read-only
// host tensors (CudaBackend::on_device), rewritten in place once. The weak pointer tells a
// storage from a later one at the same address (the backend freed, a new copy allocated).
std::mutex& tiled_registry_mutex() {
  static std::mutex mutex;
  return mutex;
}
std::map<const void*, std::weak_ptr<Storage>>& tiled_registry() {
  static auto* registry = new std::map<const void*, std::weak_ptr<Storage>>();  // never destroyed
  return *registry;
}
bool is_tiled(const Tensor& d) {  // under tiled_registry_mutex
  const auto it = tiled_registry().find(d.storage().get());
  return it != tiled_registry().end() && it->second.lock() == d.storage();
}
void mark_tiled(const Tensor& d) {  // under tiled_registry_mutex
  static std::size_t sweep_at = 1024;
  auto& registry = tiled_registry();
  registry[d.storage().get()] = d.storage();
  if (registry.size() >= sweep_at) {  // drop freed storages, amortized
    std::erase_if(registry, [](const auto& entry) { return entry.second.expired(); });
    sweep_at = 2 * registry.size() + 1024;
  }
}

}  // namespace

void awq_repack_tiled(const AwqDeviceMatrix& src, int32_t* qweight, void* zeros, void* scales,
                      void* stream) {
  check_matrix(src, "awq_repack_tiled");
  REFINERY_CHECK(src.layout == AwqLayout::kAutoAwq &&
                     awq_tiled_supported(src.bits, src.group_size, src.out, src.in) &&
                     qweight != nullptr && zeros != nullptr && scales != nullptr,
                 "awq_repack_tiled: needs an AutoAWQ-layout matrix of a tiled size and buffers");
  const auto s = static_cast<cudaStream_t>(stream);
  tile_qweight(src, src.qweight, qweight, s);
  tile_zeros(src, src.qzeros, zeros, s);
  tile_scales(src, src.scales, scales, s);
}

// ---- backend glue ----

AwqDeviceMatrix awq_device_matrix(CudaBackend& be, const AwqWeight& w, const std::string& name,
                                  std::vector<Tensor>& keep) {
  if (w.bits != 3 && w.bits != 4 && w.bits != 8)
    throw_user_error("linear ", name, ": AWQ bits must be 3, 4 or 8, found ", w.bits);
  const int pack = awq_pack_factor(w.bits);
  if (w.group_size <= 0 || w.in <= 0 || w.in % w.group_size != 0)
    throw_user_error("linear ", name, ": AWQ group_size ", w.group_size,
                     " must be positive and divide in_features ", w.in,
                     "; check quantization_config.group_size (\"q_group_size\")");
  if (w.out <= 0 || w.out % pack != 0)
    throw_user_error("linear ", name, ": AWQ out_features ", w.out, " must be a multiple of ", pack,
                     " (codes per int32 at ", w.bits, " bits)");
  const int64_t words = w.out / pack, groups = w.in / w.group_size;
  auto require = [&](const Tensor& t, const char* what, DType dtype,
                     const std::vector<int64_t>& shape) {
    if (!t.defined() || t.dtype() != dtype || t.shape() != shape)
      throw_user_error("linear ", name, ": AWQ ", what, " must be ", dtype_name(dtype),
                       shape_to_string(shape), " for ", w.bits, "-bit weights of [", w.out, ", ",
                       w.in, "] in groups of ", w.group_size, ", found ", t.describe(),
                       "; export the checkpoint in AutoAWQ's GEMM layout");
  };
  require(w.qweight, "qweight", DType::kI32, {w.in, words});
  require(w.qzeros, "qzeros", DType::kI32, {groups, words});
  require(w.scales, "scales", DType::kF16, {groups, w.out});
  AwqDeviceMatrix m;
  m.bits = w.bits;
  m.group_size = w.group_size;
  m.out = w.out;
  m.in = w.in;
  m.words = words;
  m.layout = awq_device_layout(w.bits, w.group_size, w.out, w.in);
  const Tensor* host[3] = {&w.qweight, &w.qzeros, &w.scales};
  void (*const tile[3])(const AwqDeviceMatrix&, const void*, void*, cudaStream_t) = {
      tile_qweight, tile_zeros, tile_scales};
  const void* ptr[3] = {};
  for (int i = 0; i < 3; ++i) {
    Tensor d = be.on_device(*host[i]);
    if (m.layout == AwqLayout::kTiled) {
      const auto s = static_cast<cudaStream_t>(be.stream());
      if (host[i]->device() == Device::kCPU && host[i]->is_read_only()) {
        // The backend's cached copy: rewritten in place, once.
        std::lock_guard<std::mutex> lock(tiled_registry_mutex());
        if (!is_tiled(d)) {
          Tensor source = be.empty(d.dtype(), d.shape());
          REFINERY_CUDA_CHECK(cudaMemcpyAsync(source.mutable_data(), d.data(), d.nbytes(),
                                              cudaMemcpyDeviceToDevice, s));
          tile[i](m, source.data(), d.mutable_data(), s);
          mark_tiled(d);
          m.fresh = true;
        }
      } else {
        // A per-call copy (writable host tensor) or the caller's device tensor: tiled into a new
        // tensor (the source is freed after the kernel in stream order, or stays the caller's).
        Tensor tiled = be.empty(d.dtype(), d.shape());
        tile[i](m, d.data(), tiled.mutable_data(), s);
        d = tiled;
        m.fresh = true;
      }
    }
    ptr[i] = d.data();
    keep.push_back(d);
  }
  m.qweight = static_cast<const int32_t*>(ptr[0]);
  m.qzeros = static_cast<const int32_t*>(ptr[1]);
  m.scales = ptr[2];
  if (m.layout == AwqLayout::kTiled) check_matrix(m, "awq_device_matrix");
  return m;
}

void awq_linear(CudaBackend& be, const Tensor& x, const AwqWeight& w, const std::string& name,
                Tensor& y) {
  std::vector<Tensor> keep;
  const AwqDeviceMatrix m = awq_device_matrix(be, w, name, keep);
  const int64_t rows = x.size(0);
  REFINERY_CHECK(x.size(1) == m.in && y.size(0) == rows && y.size(1) == m.out, "linear ", name,
                 ": AWQ shapes x ", shape_to_string(x.shape()), ", y ", shape_to_string(y.shape()));
  const Tensor xb = be.as_dtype(x, DType::kBF16, "linear (x to bf16)");
  const bool y_f32 = y.dtype() == DType::kF32;
  if (rows <= kAwqGemvMaxRows && awq_gemv_supports(m, rows)) {
    const int64_t need = awq_gemv_workspace_floats(m, rows);
    Tensor work = need > 0 ? be.empty(DType::kF32, {need}) : Tensor();
    awq_gemv_bf16(m, xb.data(), rows, y.mutable_data(), y_f32,
                  need > 0 ? work.mutable_data<float>() : nullptr, need, be.stream());
    be.sync_if_debugging("linear (awq gemv)");
    return;
  }
  // Prefill: chunks of whole qweight columns (pack output rows each) dequantized, then multiplied.
  const int pack = awq_pack_factor(m.bits);
  const int64_t chunk_words = std::clamp<int64_t>(kScratchElements / (m.in * pack), 1, m.words);
  Tensor scratch = be.empty(DType::kBF16, {chunk_words * pack, m.in});
  const cudaDataType y_type = y_f32 ? CUDA_R_32F : CUDA_R_16BF;
  const std::size_t y_element = y_f32 ? 4 : 2;
  for (int64_t k0 = 0; k0 < m.words; k0 += chunk_words) {
    const int64_t n = std::min(chunk_words, m.words - k0);
    awq_dequantize_bf16(m, k0, n, scratch.mutable_data(), be.stream());
    be.sync_if_debugging("linear (awq dequantize)");
    be.gemm_bf16(scratch.data(), xb.data(), rows, m.in, n * pack,
                 static_cast<std::byte*>(y.mutable_data()) + k0 * pack * y_element, y_type, m.out);
  }
}

void awq_dequantize_weight(CudaBackend& be, const AwqWeight& w, const std::string& name,
                           void* out) {
  std::vector<Tensor> keep;
  const AwqDeviceMatrix m = awq_device_matrix(be, w, name, keep);
  awq_dequantize_bf16(m, 0, m.words, out, be.stream());
  be.sync_if_debugging("awq dequantize");
}

}  // namespace refinery::backend::cuda
