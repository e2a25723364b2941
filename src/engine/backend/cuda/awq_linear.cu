// AutoAWQ (W4/W3/W8, group-quantized) linear layers on the GPU; see awq_linear.hpp for the format.
//
// GEMV (decode, rows 1..8), bandwidth-bound: every qweight int32 is read exactly once.
//   grid (ceil(words / 32), splits), block 4 warps. Lane l of every warp of block (bx, by) owns
//   qweight column word = 32·bx + l, i.e. output columns [word·pack, word·pack + pack); the 32
//   lanes of a warp read 32 consecutive int32 of one input row c (one 128-byte line, coalesced).
//   K is cut into tasks of `rt` consecutive input rows inside one group (rt divides the group
//   size, at most 64 when it can halve); split `by` owns tasks [by·tps, (by+1)·tps), which its 4
//   warps take round-robin; tps is the smallest multiple of 4 that fits the whole grid in one
//   wave of resident blocks (plan_gemv). x[:, the split's rows] is staged in shared memory as f32
//   first. Per task a thread reads its zero word and `pack` scales once, then per input row c:
//   16 (1-2 rows) or 8 loads in flight (unrolled), each word unpacked to `pack` codes as floats
//   2^23 + code (byte permute with the exponent of 2^23, no int->float conversion), code - zero
//   exact in f32, part[r][o] += (code - zero)·x[r, c]; at the task's end acc[r][o] +=
//   scale[o]·part[r][o]. The 4 warps' acc are summed in shared memory in warp order; with one split
//   the block writes y, else its partial sums go to workspace[split, rows, out] and a second kernel
//   sums the splits in split order: the result is deterministic (no atomics).
// Dequantize (prefill and MoE stacks): a block stages a tile of 64 input rows x 32 words of
//   qweight in shared memory (coalesced loads), then writes the tile's 32·pack output rows of W as
//   bf16, 8 consecutive inputs (one 16-byte store) per thread and step, 8 threads per output row
//   (128 contiguous bytes). Sizes with in or group_size not a multiple of 8 take the same kernel
//   with element-wise stores.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <mutex>

#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kGemvWarps = 4;
constexpr int kGemvThreads = 32 * kGemvWarps;
// qweight loads in flight per thread: 16 for 1-2 token rows (few registers), else 8.
template <int ROWS>
constexpr int gemv_unroll() {
  return ROWS <= 2 ? 16 : 8;
}
// Shared memory of a GEMV block in floats (32 KiB): the staged x slice [rows, span], then the
// warps' partial sums [warps, rows, pack, 32] (at most 4 · 8 · 8 · 32 = 8192).
constexpr int64_t kGemvSmemFloats = 8192;
constexpr int kTileInputs = 64, kTileWords = 32, kDequantThreads = 256;
// Rows of W per dequantization chunk in linear(): at most 16 Mi bf16 values of scratch.
constexpr int64_t kScratchElements = int64_t{1} << 24;

// Position (nibble index) of output offset o inside a 4-bit word: AutoAWQ packs output offsets
// [0,2,4,6,1,3,5,7] into nibbles 0..7, so offset o sits in nibble o/2 (o even) or o/2 + 4 (odd).
__host__ __device__ constexpr int nibble_of(int o) { return o % 2 == 0 ? o / 2 : o / 2 + 4; }

// 2^23 + the code of output offset o of a packed word, as a float (exact: the code fills the
// low mantissa bits). Subtracting two of these gives code - zero exactly.
template <int BITS>
__device__ __forceinline__ float biased_code(uint32_t word, int o) {
  const uint32_t code = BITS == 8 ? (word >> (8 * o)) & 0xFFu : (word >> (4 * nibble_of(o))) & 0xFu;
  return __uint_as_float(0x4B000000u | code);
}

// All codes of a word at once, v[o] = biased_code(word, o): the nibbles of even / odd index are
// spread to bytes by two masks, then each byte is placed under the exponent of 2^23 with one byte
// permute (result bytes: the code, 0, 0, 0x4B).
template <int BITS>
__device__ __forceinline__ void unpack_biased(uint32_t word, float (&v)[BITS == 8 ? 4 : 8]) {
  constexpr uint32_t kExponent = 0x4B000000u;
  if constexpr (BITS == 8) {
#pragma unroll
    for (int o = 0; o < 4; ++o) v[o] = __uint_as_float(__byte_perm(word, kExponent, 0x7440u | o));
  } else {
    const uint32_t even = word & 0x0F0F0F0Fu;        // byte b = nibble 2b
    const uint32_t odd = (word >> 4) & 0x0F0F0F0Fu;  // byte b = nibble 2b + 1
#pragma unroll
    for (int o = 0; o < 8; ++o) {
      const int nibble = nibble_of(o);
      const uint32_t src = nibble % 2 == 0 ? even : odd;
      v[o] = __uint_as_float(__byte_perm(src, kExponent, 0x7440u | (nibble / 2)));
    }
  }
}

struct GemvParams {
  const uint32_t* qweight;  // [in, words]
  const uint32_t* qzeros;   // [in / group_size, words]
  const __half* scales;     // [in / group_size, out]
  const __nv_bfloat16* x;   // [rows, in]
  int64_t words, out, in, group_size;
  int64_t rt;       // input rows per task (divides group_size)
  int64_t n_tasks;  // in / rt
  int64_t tasks_per_split;
  void* y;  // [rows, out] (splits == 1)
  bool y_f32;
  float* partial;  // [splits, rows, out] (splits > 1), else null
};

template <int ROWS, int BITS>
__global__ void __launch_bounds__(kGemvThreads) awq_gemv_kernel(const GemvParams p) {
  constexpr int kPack = BITS == 8 ? 4 : 8;
  constexpr int kGemvUnroll = gemv_unroll<ROWS>();
  extern __shared__ float smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t word = int64_t{blockIdx.x} * 32 + lane;
  const int64_t task0 = int64_t{blockIdx.y} * p.tasks_per_split;
  const int64_t task1 = min(p.n_tasks, task0 + p.tasks_per_split);
  const int64_t k0 = task0 * p.rt, span = (task1 - task0) * p.rt;
  // Stage x[:, k0 : k0 + span] as f32: smem[r * span + c].
  for (int64_t i = threadIdx.x; i < ROWS * span; i += kGemvThreads)
    smem[i] = __bfloat162float(p.x[(i / span) * p.in + k0 + i % span]);
  __syncthreads();

  float acc[ROWS][kPack];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int o = 0; o < kPack; ++o) acc[r][o] = 0.0f;
  if (word < p.words) {
    for (int64_t task = task0 + warp; task < task1; task += kGemvWarps) {
      const int64_t c_begin = task * p.rt, c_end = c_begin + p.rt;
      const int64_t group = c_begin / p.group_size;
      float zero[kPack], scale[kPack];
      unpack_biased<BITS>(p.qzeros[group * p.words + word], zero);
#pragma unroll
      for (int o = 0; o < kPack; ++o)
        scale[o] = __half2float(p.scales[group * p.out + word * kPack + o]);
      float part[ROWS][kPack];
#pragma unroll
      for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int o = 0; o < kPack; ++o) part[r][o] = 0.0f;
      for (int64_t c = c_begin; c < c_end; c += kGemvUnroll) {
        uint32_t packed[kGemvUnroll];
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u)  // streaming loads: qweight is read once
          packed[u] = c + u < c_end ? __ldcs(p.qweight + (c + u) * p.words + word) : 0u;
#pragma unroll
        for (int u = 0; u < kGemvUnroll; ++u) {
          if (c + u < c_end) {
            float xv[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) xv[r] = smem[r * span + (c + u - k0)];
            float code[kPack];
            unpack_biased<BITS>(packed[u], code);
#pragma unroll
            for (int o = 0; o < kPack; ++o) {
              const float d = code[o] - zero[o];  // code - zero, exact
#pragma unroll
              for (int r = 0; r < ROWS; ++r) part[r][o] = fmaf(d, xv[r], part[r][o]);
            }
          }
        }
      }
#pragma unroll
      for (int r = 0; r < ROWS; ++r)
#pragma unroll
        for (int o = 0; o < kPack; ++o) acc[r][o] = fmaf(scale[o], part[r][o], acc[r][o]);
    }
  }
  __syncthreads();  // x is no longer read: the buffer now holds the warps' sums
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int o = 0; o < kPack; ++o) smem[((warp * ROWS + r) * kPack + o) * 32 + lane] = acc[r][o];
  __syncthreads();
  for (int i = threadIdx.x; i < ROWS * kPack * 32; i += kGemvThreads) {
    const int l = i % 32, o = (i / 32) % kPack, r = i / (32 * kPack);
    float sum = 0.0f;
    for (int w = 0; w < kGemvWarps; ++w) sum += smem[((w * ROWS + r) * kPack + o) * 32 + l];
    const int64_t wi = int64_t{blockIdx.x} * 32 + l;
    if (wi >= p.words) continue;
    const int64_t col = wi * kPack + o;
    if (p.partial != nullptr)
      p.partial[(int64_t{blockIdx.y} * ROWS + r) * p.out + col] = sum;
    else if (p.y_f32)
      static_cast<float*>(p.y)[r * p.out + col] = sum;
    else
      static_cast<__nv_bfloat16*>(p.y)[r * p.out + col] = __float2bfloat16_rn(sum);
  }
}

// y[i] = Σ_s partial[s, i] for i < n, s in order.
template <typename T>
__global__ void awq_splitk_reduce_kernel(const float* partial, int64_t splits, int64_t n, T* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float sum = 0.0f;
    for (int64_t s = 0; s < splits; ++s) sum += partial[s * n + i];
    y[i] = from_f32<T>(sum);
  }
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

struct GemvPlan {
  int64_t rt = 0, n_tasks = 0, tasks_per_split = 0, splits = 0, col_tiles = 0, smem_floats = 0;
};

int pack_of(const AwqDeviceMatrix& w) { return w.bits == 8 ? 4 : 8; }

// Input rows per GEMV task: the group size, halved while above 64 and even (a task reads its
// group's zeros and scales once, so longer tasks amortize them; shorter ones give more tasks).
int64_t task_rows(int64_t group_size) {
  int64_t rt = group_size;
  while (rt > 64 && rt % 2 == 0) rt /= 2;
  return rt;
}

template <int ROWS, int BITS>
int occupancy_of() {
  int blocks = 0;
  REFINERY_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, awq_gemv_kernel<ROWS, BITS>, kGemvThreads, kGemvSmemFloats * sizeof(float)));
  return blocks;
}

template <int ROWS>
int occupancy_rows(int bits) {
  return bits == 8 ? occupancy_of<ROWS, 8>() : occupancy_of<ROWS, 4>();
}

// GEMV blocks resident on the whole current device at once (multiprocessors x blocks per
// multiprocessor of the kernel for these rows and bits, at the largest shared-memory size),
// queried once per device and kernel.
int64_t resident_blocks(int64_t rows, int bits) {
  constexpr int kMaxDevices = 64;
  static std::mutex mutex;
  static int64_t cache[kMaxDevices][kAwqGemvMaxRows + 1][2] = {};
  int device = 0;
  REFINERY_CUDA_CHECK(cudaGetDevice(&device));
  const int b = bits == 8 ? 1 : 0;
  std::lock_guard<std::mutex> lock(mutex);
  if (device < kMaxDevices && cache[device][rows][b] > 0) return cache[device][rows][b];
  int sms = 0;
  REFINERY_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  int per_sm = 0;
  switch (rows) {
    case 1:
      per_sm = occupancy_rows<1>(bits);
      break;
    case 2:
      per_sm = occupancy_rows<2>(bits);
      break;
    case 3:
      per_sm = occupancy_rows<3>(bits);
      break;
    case 4:
      per_sm = occupancy_rows<4>(bits);
      break;
    case 5:
      per_sm = occupancy_rows<5>(bits);
      break;
    case 6:
      per_sm = occupancy_rows<6>(bits);
      break;
    case 7:
      per_sm = occupancy_rows<7>(bits);
      break;
    default:
      per_sm = occupancy_rows<8>(bits);
      break;
  }
  const int64_t blocks = std::max<int64_t>(1, int64_t{sms} * per_sm);
  if (device < kMaxDevices) cache[device][rows][b] = blocks;
  return blocks;
}

// Tasks per split: a warp needs several round trips to memory per task, so a second, partial wave
// of blocks would cost about as much as the first; the plan takes the fewest tasks per warp that
// fit all blocks in one wave (tasks per split a multiple of the 4 warps, so none idles), at most
// what the x staging buffer holds. When even one split per column tile overflows a wave (very
// wide outputs) the blocks simply run in several waves.
GemvPlan plan_gemv(const AwqDeviceMatrix& w, int64_t rows) {
  GemvPlan p;
  p.rt = task_rows(w.group_size);
  p.n_tasks = w.in / p.rt;
  p.col_tiles = (w.words + 31) / 32;
  const int64_t capacity = resident_blocks(rows, w.bits);
  const int64_t max_tasks = std::max<int64_t>(1, kGemvSmemFloats / (rows * p.rt));
  int64_t tps = std::min<int64_t>(kGemvWarps, p.n_tasks);
  while (tps < p.n_tasks && tps + kGemvWarps <= max_tasks &&
         p.col_tiles * ((p.n_tasks + tps - 1) / tps) > capacity)
    tps += kGemvWarps;
  p.tasks_per_split = std::min({tps, max_tasks, p.n_tasks});
  p.splits = (p.n_tasks + p.tasks_per_split - 1) / p.tasks_per_split;
  p.smem_floats = std::max<int64_t>(rows * p.tasks_per_split * p.rt,
                                    int64_t{kGemvWarps} * rows * pack_of(w) * 32);
  return p;
}

void check_matrix(const AwqDeviceMatrix& w, const char* op) {
  REFINERY_CHECK((w.bits == 3 || w.bits == 4 || w.bits == 8) && w.group_size > 0 && w.in > 0 &&
                     w.out > 0 && w.in % w.group_size == 0 && w.out % pack_of(w) == 0 &&
                     w.words == w.out / pack_of(w),
                 op, ": inconsistent AWQ matrix (bits ", w.bits, ", group ", w.group_size, ", out ",
                 w.out, ", in ", w.in, ", words ", w.words, ")");
  REFINERY_CHECK(w.qweight != nullptr && w.qzeros != nullptr && w.scales != nullptr, op,
                 ": null AWQ tensor pointer");
}

template <int ROWS>
void launch_gemv_rows(const GemvPlan& plan, const GemvParams& params, int bits,
                      cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.col_tiles), static_cast<unsigned>(plan.splits));
  const std::size_t smem = static_cast<std::size_t>(plan.smem_floats) * sizeof(float);
  if (bits == 8)
    awq_gemv_kernel<ROWS, 8><<<grid, kGemvThreads, smem, stream>>>(params);
  else
    awq_gemv_kernel<ROWS, 4><<<grid, kGemvThreads, smem, stream>>>(params);
}

}  // namespace

bool awq_gemv_supports(const AwqDeviceMatrix& w, int64_t rows) {
  if (rows < 1 || rows > kAwqGemvMaxRows || w.group_size <= 0 || w.in <= 0 || w.words <= 0 ||
      w.in % w.group_size != 0)
    return false;
  // One task's x rows must fit the staging buffer, and the grid CUDA's limits.
  if (rows * task_rows(w.group_size) > kGemvSmemFloats) return false;
  const GemvPlan plan = plan_gemv(w, rows);
  return plan.splits <= 65535 && plan.col_tiles < (int64_t{1} << 31) &&
         plan.smem_floats <= kGemvSmemFloats;
}

int64_t awq_gemv_workspace_floats(const AwqDeviceMatrix& w, int64_t rows) {
  REFINERY_CHECK(awq_gemv_supports(w, rows), "awq_gemv: unsupported sizes");
  const GemvPlan plan = plan_gemv(w, rows);
  return plan.splits > 1 ? plan.splits * rows * w.out : 0;
}

void awq_gemv_bf16(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y, bool y_f32,
                   float* workspace, int64_t workspace_floats, void* stream) {
  check_matrix(w, "awq_gemv");
  REFINERY_CHECK(awq_gemv_supports(w, rows), "awq_gemv: unsupported sizes: rows ", rows, ", group ",
                 w.group_size, ", in ", w.in, ", out ", w.out);
  REFINERY_CHECK(x != nullptr && y != nullptr, "awq_gemv: null x or y");
  const GemvPlan plan = plan_gemv(w, rows);
  REFINERY_CHECK(plan.splits <= 65535 && plan.smem_floats <= kGemvSmemFloats,
                 "awq_gemv: plan out of range (splits ", plan.splits, ", shared floats ",
                 plan.smem_floats, ")");
  const int64_t need = plan.splits > 1 ? plan.splits * rows * w.out : 0;
  REFINERY_CHECK(workspace_floats >= need && (need == 0 || workspace != nullptr),
                 "awq_gemv: workspace of ", workspace_floats, " floats, need ", need);
  GemvParams params{reinterpret_cast<const uint32_t*>(w.qweight),
                    reinterpret_cast<const uint32_t*>(w.qzeros),
                    static_cast<const __half*>(w.scales),
                    static_cast<const __nv_bfloat16*>(x),
                    w.words,
                    w.out,
                    w.in,
                    w.group_size,
                    plan.rt,
                    plan.n_tasks,
                    plan.tasks_per_split,
                    y,
                    y_f32,
                    plan.splits > 1 ? workspace : nullptr};
  const auto s = static_cast<cudaStream_t>(stream);
  switch (rows) {
    case 1:
      launch_gemv_rows<1>(plan, params, w.bits, s);
      break;
    case 2:
      launch_gemv_rows<2>(plan, params, w.bits, s);
      break;
    case 3:
      launch_gemv_rows<3>(plan, params, w.bits, s);
      break;
    case 4:
      launch_gemv_rows<4>(plan, params, w.bits, s);
      break;
    case 5:
      launch_gemv_rows<5>(plan, params, w.bits, s);
      break;
    case 6:
      launch_gemv_rows<6>(plan, params, w.bits, s);
      break;
    case 7:
      launch_gemv_rows<7>(plan, params, w.bits, s);
      break;
    default:
      launch_gemv_rows<8>(plan, params, w.bits, s);
      break;
  }
  REFINERY_CUDA_CHECK_LAUNCH("awq_gemv");
  if (plan.splits > 1) {
    const int64_t n = rows * w.out;
    if (y_f32)
      awq_splitk_reduce_kernel<float>
          <<<grid_for(n), kThreads, 0, s>>>(workspace, plan.splits, n, static_cast<float*>(y));
    else
      awq_splitk_reduce_kernel<__nv_bfloat16><<<grid_for(n), kThreads, 0, s>>>(
          workspace, plan.splits, n, static_cast<__nv_bfloat16*>(y));
    REFINERY_CUDA_CHECK_LAUNCH("awq_gemv (split-K sum)");
  }
}

void awq_dequantize_bf16(const AwqDeviceMatrix& w, int64_t word_begin, int64_t word_count,
                         void* out, void* stream) {
  check_matrix(w, "awq_dequantize");
  REFINERY_CHECK(
      word_begin >= 0 && word_count >= 0 && word_begin + word_count <= w.words && out != nullptr,
      "awq_dequantize: words [", word_begin, ", +", word_count, ") of ", w.words);
  if (word_count == 0) return;
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
  const std::size_t at = keep.size();
  keep.push_back(be.on_device(w.qweight));
  keep.push_back(be.on_device(w.qzeros));
  keep.push_back(be.on_device(w.scales));
  AwqDeviceMatrix m;
  m.qweight = keep[at].data<int32_t>();
  m.qzeros = keep[at + 1].data<int32_t>();
  m.scales = keep[at + 2].data();
  m.bits = w.bits;
  m.group_size = w.group_size;
  m.out = w.out;
  m.in = w.in;
  m.words = words;
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
