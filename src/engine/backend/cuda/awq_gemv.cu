// AWQ GEMV kernels besides base (awq_linear.cu), selectable at run time (REFINERY_AWQ_GEMV=<name
// or index>; awq_bench gemv / gemv-sweep time them): the tiled-layout kernel (the default) and
// the AutoAWQ-layout "v2" family.
//
// Tiled ("tiled", the default), for matrices in the tiled layout
// (awq_linear.hpp; 3/4-bit, group 64·2^i, out % 16 == 0):
//   One block per tile of 16 outputs, W warps splitting K into runs of whole groups; each warp
//   streams its run of the tile's 512-byte chunks (16 outputs x 64 inputs), lane l reading the
//   16 bytes it needs (32 lanes: 512 contiguous bytes, one load instruction), BATCH = 4 chunks in
//   flight per lane (no L1 allocation: read once), plus the zero byte and scale pair of each
//   group that starts in the batch. No split over blocks: no clusters, no second pass, no atomics.
//   Per chunk, word s of the lane's slice becomes the A fragment of one mma.m16n8k16 (bf16 in,
//   f32 accumulation): A register i = nibbles (i, i + 4) (one shift + one LOP3 puts each nibble
//   under the exponent of 128.0: the bf16 pair 128 + code) minus 128 + zero (one bf16x2 FMA,
//   exact: code - zero). B = x of token row g = l / 4 (8 token rows; rows past `rows` are zeros)
//   at the lane's 4 inputs, 8 bytes, read through L1 (x is shared by all tiles). The inputs of
//   the 16-wide MMA k dimension are a permutation of the chunk's 64 inputs, the same for A and B.
//   C (16 outputs x 8 token rows) sums a group's (code - zero)·x in f32 (products exact); at the
//   group's end acc += scale·C (f32), C = 0. One kernel serves 1..8 token rows at the same cost:
//   the MMA does all 8, dequantization is per weight, not per row.
//   Reduction: the W warps' accumulators through shared memory, added by warp 0 in warp order
//   (deterministic), which writes y (bf16 rounded once, or f32).
//   Plan (per device and shape): the largest W (power of two <= 16, <= groups) at which all
//   out / 16 blocks are resident at once (occupancy API), then the fewest warps covering the
//   groups at ceil(groups / W) groups each.
//   Programmatic dependent launch (compute 9.0, unless REFINERY_AWQ_PDL=0 or the weights were
//   rewritten by this call's repack, AwqDeviceMatrix::fresh): the kernel lets the next kernel of
//   the stream launch at once (griddepcontrol.launch_dependents), issues its first batch of weight
//   loads (weights are not written by the kernels before it), and only then waits for the kernels
//   before it (griddepcontrol.wait: complete, memory visible) before it reads x or writes y. The
//   launch gap and the ramp-up of the weight stream overlap the previous kernel's tail.
//   Registers (ptxas, sm_90, no spills): 64 (batch 8 took 104 and was slower); 8 KiB static shared.
//   H100 (awq_bench gemv, 2026-11-27): 4096 -> 14336 at 1 row 15.7 µs (1.97 TB/s), the old
//   default v4r32c16 20.6 µs in the same run; 1..8 rows cost about the same.
//
// AutoAWQ layout, "v4r32c16" (v2 kernel), 3- and 4-bit: the GEMV of matrices the tiled layout does
// not cover (group 32 or 48, out % 16 != 0) and the previous default. The kernel is templated on
// (ROWS, VEC, TR); 13 other configurations of it (32/64-bit loads, 64-row tasks, a prefetching
// double buffer, <= 8 blocks per cluster, ...) were swept on an H100 in session 5 and lost to this
// one (docs/BENCHMARKS.md), then were removed:
//   Column tiles of 32 qweight words (256 outputs) as in base, but lane l owns the VEC consecutive
//   words 32·t + VEC·(l % (32/VEC)) .. +VEC and the input rows l / (32/VEC) (mod VEC) of a task:
//   one load instruction of the warp reads VEC input rows x 128 contiguous bytes, VEC·4 bytes per
//   lane (VEC 4: 16-byte loads, 4x fewer load instructions per byte than base).
//   A task is TR (32, or 16 for groups that are not multiples of 32) consecutive input rows inside
//   one group; a lane loads TR/VEC
//   vectors of qweight, its VEC zero words and VEC x 16 bytes of scales (one 16-byte load per word,
//   base loads 8 halves one by one), lanes < TR load x[r, c0 + lane (+32)] and shuffle it to the
//   lanes of each row.
//   Dequantization as base (exact f32: one LOP3 per code, code - zero exact, part[r][c] +=
//   (code - zero)·x exact products, acc += scale·part once per task).
//   Reduction, all in a fixed order (deterministic): the lanes sharing a column combine through a
//   shuffle butterfly (log2 VEC steps), each warp writes [ROWS, 256] to shared memory, each block
//   sums its warps (all threads, local shared memory), then after a cluster barrier rank q sums
//   its 1/S slice over the S ranks' block sums through DSMEM (S independent loads per output, one
//   round trip; base chains S·W dependent DSMEM loads per output).
//   Plan: as base (the fewest tasks per warp such that all clusters are resident at once, then the
//   smallest cluster), with up to 16 blocks per cluster (the non-portable cluster size).
//   Falls back to base (awq_gemv_variant_runs says "base (fallback)"):
//   8-bit weights, group sizes not a multiple of 16, words not a multiple of VEC or a qweight /
//   qzeros / scales pointer not VEC·4-byte aligned (then VEC is lowered first), a device or build
//   without clusters, and combinations listed in v2_config (registers).
//   Rows: kernels exist for ROWS 1, 2, 4, 8; 3, 5..7 token rows run the next larger kernel with the
//   extra x rows read as 0 and not written. VEC is capped at 4 for 1 row, 2 for 2 rows, 1 above
//   (the per-lane accumulators are ROWS x 8·VEC floats, twice with `part`).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "engine/backend/cuda/awq_gemv.cuh"
#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kV2MaxCluster = 16;  // blocks per cluster at most (16 needs the non-portable size)

struct Variant {
  const char* name;
  int vec;          // qweight words per lane per load: 1, 2, 4
  int task_rows;    // TR: 32 (lowered to 16 for groups that are not multiples of 32)
  int max_warps;    // per block; 0: 16 for 1-2 rows, else 8 (base's limits)
  int max_cluster;  // blocks per cluster at most: 8 (portable) or 16
  int min_tasks;    // tasks per warp at least (1: as many warps as fit in one wave)
  int tiled_batch;  // 0: an AutoAWQ-layout variant; else a tiled one, chunks loaded per batch
  const char* what;
};

// Index 0 is base (the fields are unused). Names are what REFINERY_AWQ_GEMV accepts.
constexpr Variant kVariants[] = {
    {"base", 1, 32, 0, 8, 1, 0, "awq_linear.cu kernel: 32-bit loads, DSMEM chain reduction"},
    {"v4r32c16", 4, 32, 0, 16, 1, 0, "v2, 128-bit loads, 32-row tasks, clusters <= 16"},
    {"tiled", 0, 0, 0, 0, 0, 4, "tiled layout, whole-K warps, tensor-core MMA, 4 chunks per batch"},
};
constexpr int kVariantCount = static_cast<int>(sizeof(kVariants) / sizeof(kVariants[0]));
static_assert(kAwqGemvDefaultVariant < kVariantCount && kVariants[kAwqGemvDefaultVariant].tiled_batch > 0,
              "the default GEMV variant must be a tiled one (awq_linear.hpp)");
static_assert(kAwqGemvAutoAwqVariant < kVariantCount &&
                  kVariants[kAwqGemvAutoAwqVariant].tiled_batch == 0,
              "the AutoAWQ GEMV variant must not be a tiled one (awq_linear.hpp)");

// 16^-(i % 4) for element (nibble) i: undoes the place value of the in-place unpack.
__device__ __forceinline__ constexpr float place_inverse4(int i) {
  return i % 4 == 0 ? 1.0f : i % 4 == 1 ? 0x1p-4f : i % 4 == 2 ? 0x1p-8f : 0x1p-12f;
}
// Output offset of nibble i (AutoAWQ order [0,2,4,6,1,3,5,7]).
__host__ __device__ constexpr int offset_of4(int i) { return i < 4 ? 2 * i : 2 * (i - 4) + 1; }

__device__ __forceinline__ uint32_t and_or(uint32_t a, uint32_t mask, uint32_t b) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(mask), "r"(b));
  return d;
}

// v[i] = 2^23 + code_i · 16^(i % 4) for nibble i of `word` (exact floats; see awq_linear.cu).
__device__ __forceinline__ void unpack8(uint32_t word, float* v) {
  constexpr uint32_t kExponent = 0x4B000000u;
  const uint32_t high = word >> 16;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[i] = __uint_as_float(and_or(word, 0xFu << (4 * i), kExponent));
    v[4 + i] = __uint_as_float(and_or(high, 0xFu << (4 * i), kExponent));
  }
}

// VEC consecutive words at p (VEC·4-byte aligned). STREAM: evict-first (qweight is read once).
template <int VEC, bool STREAM>
__device__ __forceinline__ void load_words(const uint32_t* p, uint32_t (&w)[VEC]) {
  if constexpr (VEC == 4) {
    const uint4 v = STREAM ? __ldcs(reinterpret_cast<const uint4*>(p))
                           : __ldg(reinterpret_cast<const uint4*>(p));
    w[0] = v.x, w[1] = v.y, w[2] = v.z, w[3] = v.w;
  } else if constexpr (VEC == 2) {
    const uint2 v = STREAM ? __ldcs(reinterpret_cast<const uint2*>(p))
                           : __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = STREAM ? __ldcs(p) : __ldg(p);
  }
}

struct V2Params {
  const uint32_t* qweight;  // [in, words]
  const uint32_t* qzeros;   // [in / group_size, words]
  const __half* scales;     // [in / group_size, out]
  const uint16_t* x;        // bf16 [rows, in]
  int64_t words, out, in, group_size;
  int64_t n_tasks;  // in / TR
  int rows;         // token rows (<= ROWS)
  int cluster;      // S
  void* y;          // [rows, out]
  bool y_f32;
};

// One task's loads for one lane.
template <int ROWS, int VEC, int TR>
struct TaskLoads {
  static constexpr int kPer = TR / VEC;         // input rows of the task this lane reads
  static constexpr int kX = TR > 32 ? 2 : 1;    // x values per row per lane
  uint32_t q[kPer][VEC];
  uint32_t z[VEC];
  uint4 s[VEC];  // 8 f16 scales of word v, output offsets 0..7
  float x[ROWS][kX];
};

template <int ROWS, int VEC, int TR>
__device__ __forceinline__ void load_task(const V2Params& p, int64_t task, bool ok, int lane,
                                          int64_t word0, TaskLoads<ROWS, VEC, TR>& t) {
  using T = TaskLoads<ROWS, VEC, TR>;
  constexpr int kLpr = 32 / VEC;
  const int64_t c0 = task * TR, group = c0 / p.group_size;
  const int sub = lane / kLpr;
  const uint32_t* q_ptr = p.qweight + (c0 + sub) * p.words + word0;
#pragma unroll
  for (int j = 0; j < T::kPer; ++j) {
    if (ok) {
      load_words<VEC, true>(q_ptr + int64_t{VEC} * j * p.words, t.q[j]);
    } else {
#pragma unroll
      for (int v = 0; v < VEC; ++v) t.q[j][v] = 0u;
    }
  }
  if (ok) {
    load_words<VEC, false>(p.qzeros + group * p.words + word0, t.z);
#pragma unroll
    for (int v = 0; v < VEC; ++v)
      t.s[v] = __ldg(reinterpret_cast<const uint4*>(p.scales + group * p.out + (word0 + v) * 8));
  } else {
#pragma unroll
    for (int v = 0; v < VEC; ++v) t.z[v] = 0u, t.s[v] = make_uint4(0u, 0u, 0u, 0u);
  }
  // x is loaded by lanes of in-range tasks regardless of `ok` (a lane past the last word still
  // shuffles x to the others); `in_task` is warp-uniform.
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int h = 0; h < T::kX; ++h) {
      const int idx = lane + 32 * h;
      t.x[r][h] = r < p.rows && idx < TR && task < p.n_tasks
                      ? __uint_as_float(uint32_t{__ldg(p.x + r * p.in + c0 + idx)} << 16)
                      : 0.0f;
    }
}

template <int ROWS, int VEC, int TR>
__device__ __forceinline__ void compute_task(const TaskLoads<ROWS, VEC, TR>& t, int lane,
                                             float (&acc)[ROWS][8 * VEC]) {
  using T = TaskLoads<ROWS, VEC, TR>;
  constexpr int kLpr = 32 / VEC;
  const int sub = lane / kLpr;
  float zero[8 * VEC];
#pragma unroll
  for (int v = 0; v < VEC; ++v) unpack8(t.z[v], zero + 8 * v);
  float part[ROWS][8 * VEC];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < 8 * VEC; ++c) part[r][c] = 0.0f;
#pragma unroll
  for (int j = 0; j < T::kPer; ++j) {
    // This lane's input row of step j: c0 + sub + VEC·j; its x sits in lane (sub + VEC·j) % 32,
    // slot (VEC·j) / 32 (the same slot for every lane of the step).
    const int slot = (VEC * j) / 32;
    const int src = (sub + VEC * j) % 32;
    float xr[ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; ++r) xr[r] = __shfl_sync(0xFFFFFFFFu, t.x[r][slot], src);
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      float code[8];
      unpack8(t.q[j][v], code);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const float d = code[i] - zero[8 * v + i];  // (code - zero)·16^(i%4), exact
#pragma unroll
        for (int r = 0; r < ROWS; ++r) part[r][8 * v + i] = fmaf(d, xr[r], part[r][8 * v + i]);
      }
    }
  }
#pragma unroll
  for (int v = 0; v < VEC; ++v) {
    const uint32_t sw[4] = {t.s[v].x, t.s[v].y, t.s[v].z, t.s[v].w};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int o = offset_of4(i);
      const auto bits = static_cast<unsigned short>(sw[o / 2] >> (16 * (o % 2)));
      const float s = __half2float(__ushort_as_half(bits)) * place_inverse4(i);  // exact
#pragma unroll
      for (int r = 0; r < ROWS; ++r)
        acc[r][8 * v + i] = fmaf(s, part[r][8 * v + i], acc[r][8 * v + i]);
    }
  }
}

// grid (tiles · S), block W·32 threads, cluster (S, 1, 1), dynamic shared memory W·ROWS·256
// floats. TR divides the group size; words % VEC == 0 and the pointers VEC·4-byte aligned.
template <int ROWS, int VEC, int TR>
__global__ void awq_gemv_v2_kernel(const V2Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
  __trap();  // clusters need sm_90; the host never launches this
#else
  namespace cg = cooperative_groups;
  constexpr int kLpr = 32 / VEC, kCols = 8 * VEC, kTileOut = 256;
  extern __shared__ float red[];  // [W, ROWS, 256]
  const cg::cluster_group cluster = cg::this_cluster();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t tile = blockIdx.x / p.cluster;
  const int64_t word0 = tile * 32 + int64_t{VEC} * (lane % kLpr);
  const bool valid = word0 < p.words;  // all VEC words valid or none (words % VEC == 0)

  float acc[ROWS][kCols];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[r][c] = 0.0f;
  const int64_t stride = int64_t{p.cluster} * warps;
  int64_t task = int64_t{rank} * warps + warp;
  for (; task < p.n_tasks; task += stride) {  // warp-uniform
    TaskLoads<ROWS, VEC, TR> cur;
    load_task<ROWS, VEC, TR>(p, task, valid, lane, word0, cur);
    compute_task<ROWS, VEC, TR>(cur, lane, acc);
  }
  // Lanes l, l + 32/VEC, ... hold the same columns (other input rows): butterfly, every lane of
  // the group ends with the same sum.
#pragma unroll
  for (int m = kLpr; m < 32; m *= 2)
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[r][c] += __shfl_xor_sync(0xFFFFFFFFu, acc[r][c], m);
  if (lane < kLpr) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int v = 0; v < VEC; ++v)
#pragma unroll
        for (int i = 0; i < 8; ++i)
          red[(warp * ROWS + r) * kTileOut + (lane * VEC + v) * 8 + offset_of4(i)] =
              acc[r][8 * v + i];
  }
  __syncthreads();
  // Block sums over warps in order, in place into warp 0's slots (element e only by thread e).
  for (int e = threadIdx.x; e < p.rows * kTileOut; e += blockDim.x) {
    float sum = red[e];
    for (int w = 1; w < warps; ++w) sum += red[w * ROWS * kTileOut + e];
    red[e] = sum;
  }
  cluster.sync();  // every rank's block sums are written
  for (int e = rank * blockDim.x + threadIdx.x; e < p.rows * kTileOut;
       e += p.cluster * blockDim.x) {
    float part[kV2MaxCluster];
#pragma unroll
    for (int q = 0; q < kV2MaxCluster; ++q)  // independent DSMEM loads, one round trip
      part[q] = q < p.cluster ? cluster.map_shared_rank(red, q)[e] : 0.0f;
    float sum = part[0];
#pragma unroll
    for (int q = 1; q < kV2MaxCluster; ++q)
      if (q < p.cluster) sum += part[q];
    const int r = e / kTileOut;
    const int64_t col = tile * kTileOut + e % kTileOut;
    if (col >= p.out) continue;
    if (p.y_f32)
      static_cast<float*>(p.y)[r * p.out + col] = sum;
    else
      static_cast<__nv_bfloat16*>(p.y)[r * p.out + col] = __float2bfloat16_rn(sum);
  }
  cluster.sync();  // no block leaves while another may still read its shared memory
#endif
}

using V2Kernel = void (*)(V2Params);

// Kernel rows for `rows` token rows, VEC for those rows (see the header comment).
int v2_rows(int64_t rows) { return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : 8; }
int v2_vec_cap(int kernel_rows) { return kernel_rows == 1 ? 4 : kernel_rows == 2 ? 2 : 1; }

template <int ROWS, int VEC>
V2Kernel v2_pick_tr(int tr) {
  return tr == 16 ? awq_gemv_v2_kernel<ROWS, VEC, 16> : awq_gemv_v2_kernel<ROWS, VEC, 32>;
}

template <int ROWS>
V2Kernel v2_pick_vec(int vec, int tr) {
  if constexpr (ROWS == 1) {
    if (vec == 4) return v2_pick_tr<ROWS, 4>(tr);
  }
  if constexpr (ROWS <= 2) {
    if (vec == 2) return v2_pick_tr<ROWS, 2>(tr);
  }
  return v2_pick_tr<ROWS, 1>(tr);
}

V2Kernel v2_kernel(int kernel_rows, int vec, int tr) {
  switch (kernel_rows) {
    case 1:
      return v2_pick_vec<1>(vec, tr);
    case 2:
      return v2_pick_vec<2>(vec, tr);
    case 4:
      return v2_pick_vec<4>(vec, tr);
    default:
      return v2_pick_vec<8>(vec, tr);
  }
}

// ---- the tiled-layout GEMV (variant "tiled"; the header comment) ----

constexpr int kTiledMaxWarps = 16;  // warps per block at most (the K split of one output tile)

struct TiledParams {
  const uint4* qweight;     // [tiles, chunks, 32 lanes] 16-byte lane slices (awq_linear.hpp)
  const uint8_t* zeros;     // [tiles, groups, 8]
  const uint32_t* scales;   // [tiles, groups, 8] f16 pairs (scale of row g, of row g + 8)
  const uint16_t* x;        // bf16 [rows, in]
  void* y;                  // [rows, out]
  int64_t out, in;
  int chunks, groups;       // in / 64, in / group_size
  int chunk_shift;          // chunks per group = 1 << chunk_shift
  int groups_per_warp;      // the K range of a warp: groups [warp·gpw, (warp + 1)·gpw)
  int rows;                 // token rows, 1..8
  bool y_f32;
};

// 16 bytes of qweight, read once: not kept in L1.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// The B fragments of one chunk for this lane: b[2s], b[2s + 1] = x[row, k + 4s .. k + 4s + 4)
// as bf16 pairs (k = 64·chunk + 16·(lane % 4)); zeros for rows past the token rows. X16: x and
// its rows 16-byte aligned (two 16-byte loads), else 2-byte loads.
template <bool X16>
__device__ __forceinline__ void load_x(const TiledParams& p, int row, int64_t k, uint32_t (&b)[8]) {
  if (row >= p.rows) {
#pragma unroll
    for (int i = 0; i < 8; ++i) b[i] = 0u;
    return;
  }
  const uint16_t* src = p.x + row * p.in + k;
  if constexpr (X16) {
    const uint4 lo = __ldg(reinterpret_cast<const uint4*>(src));
    const uint4 hi = __ldg(reinterpret_cast<const uint4*>(src) + 1);
    b[0] = lo.x, b[1] = lo.y, b[2] = lo.z, b[3] = lo.w;
    b[4] = hi.x, b[5] = hi.y, b[6] = hi.z, b[7] = hi.w;
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i)
      b[i] = uint32_t{__ldg(src + 2 * i)} | uint32_t{__ldg(src + 2 * i + 1)} << 16;
  }
}

// Nibbles n and n + 4 of `word` (n = 0..3, after the shift by 4n) as the bf16 pair
// (128 + code_n, 128 + code_{n+4}): each nibble placed in the low mantissa bits of 128.0
// (0x4300), one LOP3.
__device__ __forceinline__ uint32_t biased_pair(uint32_t shifted) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(shifted), "r"(0x000F000Fu), "r"(0x43004300u));
  return d;
}

// a + neg_zero as bf16 pairs (neg_zero = -(128 + zero) in both halves): code - zero, exact.
__device__ __forceinline__ uint32_t minus_zero(uint32_t a, uint32_t neg_zero) {
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(0x3F803F80u), "r"(neg_zero));
  return d;
}

// c += A·B for one mma.m16n8k16 (rows of A = outputs, columns of B = token rows).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One chunk (16 outputs x 64 inputs): 4 MMAs, word s of the lane's slice feeding step s.
__device__ __forceinline__ void mma_chunk(const uint4& slice, const uint32_t (&b)[8],
                                          uint32_t neg_zero_lo, uint32_t neg_zero_hi,
                                          float (&c)[4]) {
  const uint32_t words[4] = {slice.x, slice.y, slice.z, slice.w};
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const uint32_t w = words[s];
    const uint32_t a[4] = {minus_zero(biased_pair(w), neg_zero_lo),
                           minus_zero(biased_pair(w >> 4), neg_zero_hi),
                           minus_zero(biased_pair(w >> 8), neg_zero_lo),
                           minus_zero(biased_pair(w >> 12), neg_zero_hi)};
    mma_bf16(c, a, b[2 * s], b[2 * s + 1]);
  }
}

// -(128 + z) as a bf16 pair (z <= 15: exact).
__device__ __forceinline__ uint32_t neg_biased_zero(uint32_t z) {
  const uint32_t v = 0xC300u | z;  // sign bit set
  return v | v << 16;
}

// Programmatic dependent launch (sm_90; no-ops when the kernel was launched without the attribute):
// let the stream's next kernel launch now / wait until the kernels before this one are complete and
// their writes visible.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_prior_kernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// grid: one block per output tile (16 outputs), block W·32 threads (W <= kTiledMaxWarps).
template <int BATCH, bool X16>
__global__ void __launch_bounds__(kTiledMaxWarps * 32) awq_gemv_tiled_kernel(const TiledParams p) {
  __shared__ float red[kTiledMaxWarps][32][4];
  allow_dependent_launch();
  bool waited = false;  // x is read and y written only after wait_for_prior_kernels
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, q = lane % 4;  // mma group (output row g, g + 8; token row g) and thread
  const int64_t tile = blockIdx.x;
  const int first_group = warp * p.groups_per_warp;
  const int last_group = min(first_group + p.groups_per_warp, p.groups);
  const int c_begin = first_group << p.chunk_shift;
  const int c_end = max(last_group, first_group) << p.chunk_shift;
  const int group_mask = (1 << p.chunk_shift) - 1;
  const uint4* qw = p.qweight + tile * p.chunks * 32 + lane;
  const uint8_t* zp = p.zeros + tile * p.groups * 8 + g;
  const uint32_t* sp = p.scales + tile * p.groups * 8 + g;

  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // C layout: (row g | g + 8, token 2q | 2q + 1)
  float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};    // the current group's sum of (code - zero)·x
  uint32_t neg_zero_lo = 0u, neg_zero_hi = 0u;
  float2 scale = make_float2(0.0f, 0.0f);
  for (int base = c_begin; base < c_end; base += BATCH) {  // warp-uniform
    // All of a batch's loads in flight at once: BATCH x 16 bytes of qweight per lane and the
    // zero and scale words of the groups starting in it.
    uint4 slice[BATCH];
    uint32_t zero_byte[BATCH], scale_pair[BATCH];
#pragma unroll
    for (int i = 0; i < BATCH; ++i) {
      const int chunk = base + i;
      if (chunk < c_end) {
        slice[i] = load_streaming(qw + int64_t{chunk} * 32);
        if ((chunk & group_mask) == 0) {
          const int group = chunk >> p.chunk_shift;
          zero_byte[i] = __ldg(zp + group * 8);
          scale_pair[i] = __ldg(sp + group * 8);
        }
      }
    }
    if (!waited) {  // the first batch's weights are in flight: now x may be read
      wait_for_prior_kernels();
      waited = true;
    }
#pragma unroll
    for (int i = 0; i < BATCH; ++i) {
      const int chunk = base + i;
      if (chunk >= c_end) break;
      uint32_t b[8];
      load_x<X16>(p, g, int64_t{chunk} * 64 + 16 * q, b);
      if ((chunk & group_mask) == 0) {
        neg_zero_lo = neg_biased_zero(zero_byte[i] & 15u);
        neg_zero_hi = neg_biased_zero(zero_byte[i] >> 4);
        scale = __half22float2(*reinterpret_cast<const __half2*>(&scale_pair[i]));
      }
      mma_chunk(slice[i], b, neg_zero_lo, neg_zero_hi, c);
      if ((chunk & group_mask) == group_mask) {  // the group's last chunk: scale it in
        acc[0] = fmaf(scale.x, c[0], acc[0]);
        acc[1] = fmaf(scale.x, c[1], acc[1]);
        acc[2] = fmaf(scale.y, c[2], acc[2]);
        acc[3] = fmaf(scale.y, c[3], acc[3]);
        c[0] = c[1] = c[2] = c[3] = 0.0f;
      }
    }
  }
  if (!waited) wait_for_prior_kernels();  // a warp without groups
  // The K split of the tile: warps' sums added in warp order (deterministic).
  if (warps > 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][lane][i] = acc[i];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float sum = red[0][lane][i];
      for (int w = 1; w < warps; ++w) sum += red[w][lane][i];
      acc[i] = sum;
    }
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int token = 2 * q + (i % 2);
    const int64_t o = tile * 16 + g + 8 * (i / 2);
    if (token >= p.rows) continue;
    if (p.y_f32)
      static_cast<float*>(p.y)[token * p.out + o] = acc[i];
    else
      static_cast<__nv_bfloat16*>(p.y)[token * p.out + o] = __float2bfloat16_rn(acc[i]);
  }
}

using TiledKernel = void (*)(TiledParams);

// Batch 4 only: 8 chunks per batch (104 registers, fewer warps resident) was slower on 9 of the 10
// H100 cases of awq_bench gemv (e.g. 4096 -> 14336, 1 row: 20.8 vs 15.7 µs).
TiledKernel tiled_kernel(int batch, bool x16) {
  REFINERY_CHECK(batch == 4, "awq_gemv: no tiled kernel for batch ", batch);
  return x16 ? awq_gemv_tiled_kernel<4, true> : awq_gemv_tiled_kernel<4, false>;
}

struct TiledPlan {
  bool usable = false;  // a device with bf16 MMA and a kernel image for it
  int warps = 0, groups_per_warp = 0;
};

// Warps per block: the largest power of two (<= kTiledMaxWarps, <= groups) at which every tile's
// block is resident at once (one wave), so that the most warps stream at the same time; then as
// few warps as cover the groups at that many groups per warp.
TiledPlan make_tiled_plan(int device, int64_t tiles, int groups, int batch) {
  TiledPlan p;
  int major = 0, sms = 0;
  REFINERY_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  REFINERY_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (major < 8) return p;
  const TiledKernel kernel = tiled_kernel(batch, true);
  cudaFuncAttributes attributes = {};
  if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess) {
    (void)cudaGetLastError();
    return p;
  }
  if (attributes.binaryVersion < 80) return p;
  int warps = 1;
  for (int w = 2; w <= kTiledMaxWarps && w <= groups; w *= 2) {
    int blocks = 0;
    REFINERY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, 32 * w, 0));
    if (int64_t{blocks} * sms < tiles) break;
    warps = w;
  }
  // REFINERY_AWQ_TILED_WARPS=N (benchmarking: awq_bench gemv sweeps it) replaces the choice above
  // with N warps per block (1..16, at most one per group); read when a shape's plan is made.
  if (const char* env = std::getenv("REFINERY_AWQ_TILED_WARPS"); env != nullptr && *env != '\0') {
    const int forced = std::atoi(env);
    if (forced < 1 || forced > kTiledMaxWarps)
      throw_user_error("REFINERY_AWQ_TILED_WARPS=", env, ": expected 1..", kTiledMaxWarps,
                       " warps per block; unset it for the automatic choice");
    warps = std::min(forced, groups);
  }
  p.groups_per_warp = (groups + warps - 1) / warps;
  p.warps = (groups + p.groups_per_warp - 1) / p.groups_per_warp;
  p.usable = tiles < (int64_t{1} << 31);
  return p;
}

TiledPlan plan_tiled(const AwqDeviceMatrix& w, int batch) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 4>, TiledPlan> cache;
  int device = 0;
  REFINERY_CUDA_CHECK(cudaGetDevice(&device));
  const int64_t tiles = w.out / 16, groups = w.in / w.group_size;
  const std::array<int64_t, 4> key{device, tiles, groups, batch};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end())
    it = cache.emplace(key, make_tiled_plan(device, tiles, static_cast<int>(groups), batch)).first;
  return it->second;
}

// What a variant actually runs for a matrix and row count: vec 0 means the base kernel.
struct V2Config {
  int kernel_rows = 0, vec = 0, tr = 0;
};

bool aligned_to(const void* p, int bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % static_cast<std::uintptr_t>(bytes) == 0;
}

V2Config v2_config(const AwqDeviceMatrix& w, int64_t rows, const Variant& v) {
  V2Config c;
  if (w.bits == 8 || w.group_size % 16 != 0 || rows < 1 || rows > 8) return c;  // base
  c.kernel_rows = v2_rows(rows);
  c.tr = v.task_rows;  // 32 or 16
  while (c.tr > 16 && w.group_size % c.tr != 0) c.tr /= 2;
  c.vec = std::min(v.vec, v2_vec_cap(c.kernel_rows));
  // words % VEC == 0 keeps every row's vectors aligned; the scales need 16 bytes per word (always
  // aligned when the pointer is: out = 8·words).
  while (c.vec > 1 && (w.words % c.vec != 0 || !aligned_to(w.qweight, 4 * c.vec) ||
                       !aligned_to(w.qzeros, 4 * c.vec)))
    c.vec /= 2;
  if (!aligned_to(w.scales, 16)) c.vec = 0;
  return c;
}

struct V2Plan {
  bool usable = false;
  V2Config config;
  int cluster = 0, warps = 0;
  int64_t n_tasks = 0, tiles = 0, smem_bytes = 0;
};

std::size_t v2_smem_bytes(int kernel_rows, int warps) {
  return static_cast<std::size_t>(warps) * kernel_rows * 256 * sizeof(float);
}

int v2_max_active_clusters(V2Kernel kernel, int kernel_rows, int cluster, int warps) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(cluster));
  config.blockDim = dim3(static_cast<unsigned>(32 * warps));
  config.dynamicSmemBytes = v2_smem_bytes(kernel_rows, warps);
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

V2Plan make_v2_plan(int device, const AwqDeviceMatrix& w, int64_t rows, const Variant& v) {
  V2Plan p;
  p.config = v2_config(w, rows, v);
  if (p.config.vec == 0) return p;
  const V2Kernel kernel =
      v2_kernel(p.config.kernel_rows, p.config.vec, p.config.tr);
  int major = 0;
  REFINERY_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (major < 9) return p;
  cudaFuncAttributes attributes = {};
  if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess) {
    (void)cudaGetLastError();
    return p;
  }
  if (attributes.binaryVersion < 90 || attributes.ptxVersion < 90) return p;
  // Warps per block: the variant's limit, base's by rows, and what the registers allow.
  int max_warps = v.max_warps > 0 ? v.max_warps : (rows <= 2 ? 16 : 8);
  max_warps = std::min(max_warps, attributes.maxThreadsPerBlock / 32);
  if (max_warps < 1) return p;
  REFINERY_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(v2_smem_bytes(p.config.kernel_rows, max_warps))));
  int max_cluster = std::min(v.max_cluster, kV2MaxCluster);
  if (max_cluster > 8 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) !=
          cudaSuccess) {
    (void)cudaGetLastError();
    max_cluster = 8;
  }
  p.n_tasks = w.in / p.config.tr;
  p.tiles = (w.words + 31) / 32;
  std::map<std::pair<int, int>, bool> fits;
  auto fits_one_wave = [&](int s, int wp) {
    const auto key = std::make_pair(s, wp);
    auto it = fits.find(key);
    if (it == fits.end())
      it = fits
               .emplace(key, v2_max_active_clusters(kernel, p.config.kernel_rows, s, wp) >=
                                 p.tiles)
               .first;
    return it->second;
  };
  const int64_t max_tile_warps = std::min<int64_t>(int64_t{max_cluster} * max_warps, p.n_tasks);
  const int64_t k_first =
      std::max<int64_t>(v.min_tasks, (p.n_tasks + max_tile_warps - 1) / max_tile_warps);
  for (int64_t k = k_first; k <= p.n_tasks; ++k) {
    const int64_t t = (p.n_tasks + k - 1) / k;  // warps per tile for k tasks per warp
    if (k > k_first && (p.n_tasks + k - 2) / (k - 1) == t) continue;  // same T as k - 1
    for (int s = 1; s <= max_cluster; ++s) {
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
  p.smem_bytes = static_cast<int64_t>(v2_smem_bytes(p.config.kernel_rows, p.warps));
  p.usable = p.tiles * p.cluster < (int64_t{1} << 31);
  return p;
}

V2Plan plan_v2(const AwqDeviceMatrix& w, int64_t rows, int variant) {
  static std::mutex mutex;
  static std::map<std::array<int64_t, 8>, V2Plan> cache;
  int device = 0;
  REFINERY_CUDA_CHECK(cudaGetDevice(&device));
  // The alignment of the pointers is part of the key (it can lower VEC).
  const int64_t align = (reinterpret_cast<std::uintptr_t>(w.qweight) % 16 == 0 ? 1 : 0) |
                        (reinterpret_cast<std::uintptr_t>(w.qzeros) % 16 == 0 ? 2 : 0) |
                        (reinterpret_cast<std::uintptr_t>(w.scales) % 16 == 0 ? 4 : 0) |
                        (reinterpret_cast<std::uintptr_t>(w.qweight) % 8 == 0 ? 8 : 0) |
                        (reinterpret_cast<std::uintptr_t>(w.qzeros) % 8 == 0 ? 16 : 0);
  const std::array<int64_t, 8> key{device,  rows,          w.bits == 8 ? 8 : 4, w.words, w.in,
                                   w.group_size, variant, align};
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make_v2_plan(device, w, rows, kVariants[variant])).first;
  return it->second;
}

int parse_variant(const char* text) {
  if (text == nullptr || *text == '\0') return -1;
  for (int i = 0; i < kVariantCount; ++i)
    if (std::strcmp(text, kVariants[i].name) == 0) return i;
  char* end = nullptr;
  const long n = std::strtol(text, &end, 10);
  if (end != text && *end == '\0' && n >= 0 && n < kVariantCount) return static_cast<int>(n);
  return -1;
}

void check_variant(int variant) {
  REFINERY_CHECK(variant >= 0 && variant < kVariantCount, "awq_gemv: variant ", variant,
                 " out of range [0, ", kVariantCount, ")");
}

}  // namespace

int awq_gemv_variant_count() { return kVariantCount; }

std::string awq_gemv_variant_name(int variant) {
  check_variant(variant);
  return kVariants[variant].name;
}

std::string awq_gemv_variant_description(int variant) {
  check_variant(variant);
  return kVariants[variant].what;
}

int awq_gemv_active_variant() {
  static const int active = [] {
    const char* env = std::getenv("REFINERY_AWQ_GEMV");
    if (env == nullptr || *env == '\0') return kAwqGemvDefaultVariant;
    const int v = parse_variant(env);
    if (v < 0) {
      std::string names;
      for (int i = 0; i < kVariantCount; ++i) names += std::string(i ? ", " : "") + kVariants[i].name;
      throw_user_error("REFINERY_AWQ_GEMV='", env, "' names no AWQ GEMV variant; use an index 0..",
                       kVariantCount - 1, " or one of: ", names);
    }
    return v;
  }();
  return active;
}

bool awq_gemv_variant_is_tiled(int variant) {
  check_variant(variant);
  return kVariants[variant].tiled_batch > 0;
}

// The variant that runs for a matrix of w's layout when `variant` is asked for.
int variant_for_layout(const AwqDeviceMatrix& w, int variant) {
  const bool tiled = w.layout == AwqLayout::kTiled;
  if (awq_gemv_variant_is_tiled(variant) == tiled) return variant;
  return tiled ? kAwqGemvDefaultVariant : kAwqGemvAutoAwqVariant;
}

std::string awq_gemv_variant_runs(const AwqDeviceMatrix& w, int64_t rows, int variant) {
  check_variant(variant);
  const int v = variant_for_layout(w, variant);
  const std::string other = v == variant ? "" : str(" (for ", kVariants[variant].name, ")");
  if (kVariants[v].tiled_batch > 0) {
    const TiledPlan plan = plan_tiled(w, kVariants[v].tiled_batch);
    if (!plan.usable) return "none (no tiled kernel for this device)";
    return str("tiled batch", kVariants[v].tiled_batch, " W", plan.warps, " groups/warp ",
               plan.groups_per_warp, " tiles ", w.out / 16, other);
  }
  if (v == 0) return "base" + other;
  const V2Plan plan = plan_v2(w, rows, v);
  if (!plan.usable) return "base (fallback)" + other;
  return str("v2 rows", plan.config.kernel_rows, " vec", plan.config.vec, " tr", plan.config.tr,
             " S", plan.cluster, " W", plan.warps, " tiles", plan.tiles, other);
}

// REFINERY_AWQ_PDL=0 launches the tiled GEMV without programmatic dependent launch (for timing
// comparisons; read per call); the attribute needs compute 9.0.
static bool pdl_enabled() {
  const char* env = std::getenv("REFINERY_AWQ_PDL");
  return !(env != nullptr && std::strcmp(env, "0") == 0) &&
         refinery::cuda::current_device_compute_major() >= 9;
}

bool awq_gemv_tiled_usable(const AwqDeviceMatrix& w) {
  if (w.layout != AwqLayout::kTiled) return false;
  return plan_tiled(w, kVariants[kAwqGemvDefaultVariant].tiled_batch).usable;
}

void awq_gemv_tiled_launch(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                           bool y_f32, int variant, void* stream) {
  const int batch = kVariants[variant_for_layout(w, variant)].tiled_batch;
  REFINERY_CHECK(w.layout == AwqLayout::kTiled && batch > 0 && rows >= 1 && rows <= 8,
                 "awq_gemv: tiled launch of a matrix in the AutoAWQ layout or ", rows, " rows");
  const TiledPlan plan = plan_tiled(w, batch);
  REFINERY_CHECK(plan.usable, "awq_gemv: no tiled kernel for this device");
  int shift = 0;
  while ((int64_t{64} << shift) < w.group_size) ++shift;
  const TiledParams params{reinterpret_cast<const uint4*>(w.qweight),
                           reinterpret_cast<const uint8_t*>(w.qzeros),
                           static_cast<const uint32_t*>(w.scales),
                           static_cast<const uint16_t*>(x),
                           y,
                           w.out,
                           w.in,
                           static_cast<int>(w.in / 64),
                           static_cast<int>(w.in / w.group_size),
                           shift,
                           plan.groups_per_warp,
                           static_cast<int>(rows),
                           y_f32};
  const bool x16 = reinterpret_cast<std::uintptr_t>(x) % 16 == 0;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(w.out / 16));
  config.blockDim = dim3(static_cast<unsigned>(32 * plan.warps));
  config.stream = static_cast<cudaStream_t>(stream);
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  // Not after this call's own repack: the kernel reads weights before it waits (header comment).
  config.numAttrs = !w.fresh && pdl_enabled() ? 1 : 0;
  REFINERY_CUDA_CHECK(cudaLaunchKernelEx(&config, tiled_kernel(batch, x16), params));
  REFINERY_CUDA_CHECK_LAUNCH("awq_gemv (tiled)");
}

bool awq_gemv_v2_launch(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                        bool y_f32, int variant, void* stream) {
  if (variant <= 0 || variant >= kVariantCount || kVariants[variant].tiled_batch > 0) return false;
  const V2Plan plan = plan_v2(w, rows, variant);
  if (!plan.usable) return false;
  const V2Params params{reinterpret_cast<const uint32_t*>(w.qweight),
                        reinterpret_cast<const uint32_t*>(w.qzeros),
                        static_cast<const __half*>(w.scales),
                        static_cast<const uint16_t*>(x),
                        w.words,
                        w.out,
                        w.in,
                        w.group_size,
                        plan.n_tasks,
                        static_cast<int>(rows),
                        plan.cluster,
                        y,
                        y_f32};
  const V2Kernel kernel =
      v2_kernel(plan.config.kernel_rows, plan.config.vec, plan.config.tr);
  launch_clustered(kernel, params, plan.tiles, plan.cluster, plan.warps, plan.smem_bytes, stream);
  REFINERY_CUDA_CHECK_LAUNCH("awq_gemv (variant)");
  return true;
}

void awq_gemv_bf16_variant(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                           bool y_f32, int variant, void* stream) {
  check_variant(variant);
  REFINERY_CHECK(awq_gemv_supports(w, rows), "awq_gemv: unsupported sizes: rows ", rows, ", group ",
                 w.group_size, ", in ", w.in, ", out ", w.out);
  REFINERY_CHECK(x != nullptr && y != nullptr, "awq_gemv: null x or y");
  if (w.layout == AwqLayout::kTiled) {
    awq_gemv_tiled_launch(w, x, rows, y, y_f32, variant, stream);
    return;
  }
  const int v = variant_for_layout(w, variant);
  if (!awq_gemv_v2_launch(w, x, rows, y, y_f32, v, stream))
    awq_gemv_base_launch(w, x, rows, y, y_f32, stream);
}

}  // namespace refinery::backend::cuda
