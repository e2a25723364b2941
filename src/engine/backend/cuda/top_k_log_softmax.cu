// Fused, vocabulary-chunked log-softmax + top-k (see top_k_log_softmax.hpp for the contract).
//
// Design. One thread block (256 threads) per row per call. Every element is ranked by a 64-bit
// entry = (order-preserving u32 key of the float) << 32 | (2^32 - 1 - id): entries are unique,
// larger entry = more likely, equal logits rank the lower id first: the CPU's order exactly.
// An update merges the row's chunk with the row's running k (kept in global memory, a prefix of
// valid slots):
//   1. one pass over the chunk (the only read of it in the common case): the online (max, Σexp)
//      per thread, the largest entry of each of 256·G thread-strided groups (256·G >= k), and,
//      when the running k is full, every entry above the running k-th is appended to a 4096-entry
//      shared buffer after the running k. After the first chunks only a few do (~k·cols/seen).
//   2. if the buffer did not overflow, it holds every candidate; else (first chunk, or a chunk
//      much larger than everything before) the k-th largest of (group maxima ∪ running k) is a
//      lower bound of the true k-th (those are k distinct candidates), and a second pass gathers
//      the entries above it (typically ~k..10k of them). Only if that overflows too (adversarial
//      layouts) does a radix select run over global memory.
//   3. an MSB-first radix select (8-bit digits, warp-aggregated shared-memory histograms) over
//      the buffer finds the prefix T with exactly k entries >= T (it stops as soon as the bin of
//      the k-th is taken whole, usually after 2-4 digits); those k entries become the new state.
// finish sorts the k entries of each row (bitonic, in shared memory) and writes ids and
// value - (max + log Σ). Bound: memory (one f32 read per logit in the steady state; the math is
// one expf and a few integer ops per element). The log-sum-exp is f32: per-thread sequential
// sums of cols/256 terms, a tree across the block, one rescaled merge per chunk.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/top_k_log_softmax.hpp"
#include "engine/backend/priority_sampling.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

namespace {

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
constexpr int kUnroll = 8;              // chunk elements per thread per loop step (loads in flight)
constexpr unsigned kCapacity = 4096;    // shared candidate buffer, u64 entries (32 KiB)
constexpr unsigned kMaxGroups = 4;      // thread-strided groups per thread (256·4 >= kMaxTopK)
static_assert(kCapacity >= kMaxTopK + kBlock * kMaxGroups, "buffer holds running k + group maxima");
static_assert(kUnroll % kMaxGroups == 0, "groups must divide the unroll");

// ---- entries -------------------------------------------------------------------------------------

// Order-preserving u32 key of a float: larger float -> larger key. Every NaN maps to the largest
// key (ranked first), -0 to +0's key (they compare equal on the CPU).
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x != x) return 0xFFFFFFFFu;
  uint32_t u = __float_as_uint(x);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key ^ 0x80000000u) : ~key);
}

// Never 0 for a real element (the smallest key, -inf's, is 0x007FFFFF), so 0 means "none".
__device__ __forceinline__ uint64_t make_entry(float x, int64_t id) {
  return (static_cast<uint64_t>(order_key(x)) << 32) |
         (0xFFFFFFFFu - static_cast<uint32_t>(id));
}

__device__ __forceinline__ int32_t entry_id(uint64_t e) {
  return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(e));
}

__device__ __forceinline__ float entry_value(uint64_t e) {
  return key_value(static_cast<uint32_t>(e >> 32));
}

// ---- online log-sum-exp --------------------------------------------------------------------------

// s·exp(m - m_new); m == m_new also covers -inf == -inf (exp(NaN) would poison the sum).
__device__ __forceinline__ float rescale(float s, float m, float m_new) {
  return m == m_new ? s : s * expf(m - m_new);
}

// (m, s) <- (m, s) ⊕ (m2, s2). NaN sums stay NaN; max ignores NaN (fmaxf).
__device__ __forceinline__ void merge_lse(float& m, float& s, float m2, float s2) {
  const float m_new = fmaxf(m, m2);
  s = rescale(s, m, m_new) + rescale(s2, m2, m_new);
  m = m_new;
}

// ---- block-cooperative helpers (every lane of every warp must call them together) -----------------

struct Shared {
  uint64_t buf[kCapacity];
  unsigned hist[256];
  unsigned count;  // append counter (may exceed kCapacity: that is how overflow is seen)
  unsigned n_valid;
  unsigned long long run_min;
  unsigned bin, new_above, in_range;
  float red_m[kWarps], red_s[kWarps];
};

// Appends e where pred (one shared atomic per warp); store(index, e) writes it.
template <class Store>
__device__ __forceinline__ void warp_append(bool pred, uint64_t e, unsigned* counter,
                                            Store&& store) {
  const unsigned active = __ballot_sync(0xFFFFFFFFu, pred);
  if (active == 0) return;
  const int lane = threadIdx.x & 31;
  const int leader = __ffs(active) - 1;
  unsigned base = 0;
  if (lane == leader) base = atomicAdd(counter, static_cast<unsigned>(__popc(active)));
  base = __shfl_sync(0xFFFFFFFFu, base, leader);
  if (pred) store(base + static_cast<unsigned>(__popc(active & ((1u << lane) - 1u))), e);
}

// hist[digit] += 1 where pred; lanes with equal digits add once together (clustered floats would
// otherwise serialize on one shared address).
__device__ __forceinline__ void warp_count(bool pred, unsigned digit, unsigned* hist) {
  const unsigned active = __ballot_sync(0xFFFFFFFFu, pred);
  if (!pred) return;
  const unsigned peers = __match_any_sync(active, digit);
  if ((threadIdx.x & 31) == static_cast<unsigned>(__ffs(peers) - 1))
    atomicAdd(&hist[digit], static_cast<unsigned>(__popc(peers)));
}

// Warp 0: the bin b (of 256) that holds the k_sel-th largest entry given `above` entries in
// higher prefixes: above + #(bins > b) < k_sel <= above + #(bins >= b).
__device__ void find_bin(Shared& sh, unsigned above, unsigned k_sel) {
  const int lane = threadIdx.x;
  unsigned local[8], sum = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    local[j] = sh.hist[lane * 8 + j];
    sum += local[j];
  }
  unsigned suffix = sum;  // Σ over lanes >= lane
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const unsigned v = __shfl_down_sync(0xFFFFFFFFu, suffix, off);
    if (lane + off < 32) suffix += v;
  }
  unsigned greater = above + suffix - sum;
#pragma unroll
  for (int j = 7; j >= 0; --j) {
    if (greater < k_sel && k_sel <= greater + local[j]) {
      sh.bin = static_cast<unsigned>(lane * 8 + j);
      sh.new_above = greater;
      sh.in_range = local[j];
    }
    greater += local[j];
  }
}

// The prefix T with exactly k_sel visited entries >= T (MSB-first radix select over 8-bit digits,
// stopping once the k_sel-th's bin is taken whole). visit(f) calls f(pred, entry) for every
// candidate, on all threads in lockstep (pred false for padding). Requires 1 <= k_sel <= number of
// candidates, and unique entries. Ends with a barrier, so the caller may overwrite what it read.
template <class Visit>
__device__ uint64_t radix_select(Visit&& visit, unsigned k_sel, Shared& sh) {
  uint64_t prefix = 0;
  unsigned above = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    sh.hist[threadIdx.x] = 0;
    if (threadIdx.x == 0) {  // only kept if no bin qualifies (a broken contract): stop cleanly
      sh.bin = 0;
      sh.new_above = above;
      sh.in_range = k_sel - above;
    }
    __syncthreads();
    const uint64_t high_mask = shift == 56 ? 0 : ~uint64_t{0} << (shift + 8);
    visit([&](bool pred, uint64_t e) {
      warp_count(pred && (e & high_mask) == prefix, static_cast<unsigned>(e >> shift) & 255u,
                 sh.hist);
    });
    __syncthreads();
    if (threadIdx.x < 32) find_bin(sh, above, k_sel);
    __syncthreads();
    prefix |= static_cast<uint64_t>(sh.bin) << shift;
    above = sh.new_above;
    const unsigned in_range = sh.in_range;
    __syncthreads();
    if (above + in_range == k_sel) break;
  }
  return prefix;
}

// ---- kernels -------------------------------------------------------------------------------------

__global__ void begin_kernel(TopKLogSoftmaxState s) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < s.rows * s.k; i += stride) {
    s.values[i] = -INFINITY;
    s.ids[i] = -1;
    if (i < s.rows) {
      s.max[i] = -INFINITY;
      s.sum[i] = 0.0f;
    }
  }
}

// G thread-strided groups per thread: element c belongs to group (c % 256, (c / 256) % G).
// Sampled: rank by logit + priority noise (the state holds those keys), see the header.
template <int G, bool Sampled>
__global__ void __launch_bounds__(kBlock)
    update_kernel(TopKLogSoftmaxState s, const float* logits, int64_t ld, int64_t cols,
                  int64_t first_col) {
  __shared__ Shared sh;
  const int t = threadIdx.x;
  const int64_t r = blockIdx.x;
  auto rank_entry = [&](float x, int64_t id) {
    if constexpr (Sampled)
      x += priority_noise(s.seed, s.first_row_key + r, static_cast<int32_t>(id));
    return make_entry(x, id);
  };
  const unsigned k = static_cast<unsigned>(s.k);
  const float* row = logits + r * ld;
  float* values = s.values + r * s.k;
  int32_t* ids = s.ids + r * s.k;

  // The running entries (valid slots are a prefix) into buf[0, n_valid), and the smallest of them.
  if (t == 0) {
    sh.n_valid = 0;
    sh.run_min = ~0ull;
  }
  __syncthreads();
  unsigned my_valid = 0;
  unsigned long long my_min = ~0ull;
  for (unsigned i = t; i < k; i += kBlock) {
    const int32_t id = ids[i];
    if (id >= 0) {
      const uint64_t e = make_entry(values[i], id);
      sh.buf[i] = e;
      ++my_valid;
      my_min = e < my_min ? e : my_min;
    }
  }
  if (my_valid) {
    atomicAdd(&sh.n_valid, my_valid);
    atomicMin(&sh.run_min, my_min);
  }
  __syncthreads();
  const unsigned n_valid = sh.n_valid;
  const bool full = n_valid == k;
  const uint64_t run_min = sh.run_min;
  if (t == 0) sh.count = n_valid;
  __syncthreads();

  auto to_buf = [&](unsigned i, uint64_t e) {
    if (i < kCapacity) sh.buf[i] = e;
  };

  // Pass 1 over the chunk.
  float m = -INFINITY, sum = 0.0f;
  uint64_t group_max[G];
#pragma unroll
  for (int g = 0; g < G; ++g) group_max[g] = 0;
  for (int64_t base = 0; base < cols; base += int64_t{kBlock} * kUnroll) {
    float x[kUnroll];
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int64_t c = base + j * kBlock + t;
      x[j] = c < cols ? row[c] : -INFINITY;
    }
    float chunk_max = x[0];
#pragma unroll
    for (int j = 1; j < kUnroll; ++j) chunk_max = fmaxf(chunk_max, x[j]);
    const float m_new = fmaxf(m, chunk_max);
    sum = rescale(sum, m, m_new);
    m = m_new;
#pragma unroll
    for (int j = 0; j < kUnroll; ++j)
      if (x[j] != -INFINITY) sum += expf(x[j] - m);  // NaN stays NaN; m >= every finite x
#pragma unroll
    for (int j = 0; j < kUnroll; ++j) {
      const int64_t c = base + j * kBlock + t;
      const bool in = c < cols;
      const uint64_t e = in ? rank_entry(x[j], first_col + c) : 0;
      group_max[j % G] = e > group_max[j % G] ? e : group_max[j % G];
      if (full) warp_append(in && e > run_min, e, &sh.count, to_buf);
    }
  }

  // (max, Σexp) of the chunk across the block, merged into the row's running pair.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xFFFFFFFFu, m, off);
    const float s2 = __shfl_xor_sync(0xFFFFFFFFu, sum, off);
    merge_lse(m, sum, m2, s2);
  }
  if ((t & 31) == 0) {
    sh.red_m[t / 32] = m;
    sh.red_s[t / 32] = sum;
  }
  __syncthreads();
  if (t == 0) {
    float rm = s.max[r], rs = s.sum[r];
    for (int w = 0; w < kWarps; ++w) merge_lse(rm, rs, sh.red_m[w], sh.red_s[w]);
    s.max[r] = rm;
    s.sum[r] = rs;
  }
  const unsigned pass1_count = sh.count;
  __syncthreads();

  const unsigned total = static_cast<unsigned>(cols) + n_valid;  // candidates; < 2^31
  const unsigned k_sel = total < k ? total : k;
  // Every candidate below `lower` is known not to be in the top k_sel.
  uint64_t lower = 1;
  auto visit_global = [&](auto&& f) {
    for (int64_t base = 0; base < cols; base += kBlock) {
      const int64_t c = base + t;
      const uint64_t e = c < cols ? rank_entry(row[c], first_col + c) : 0;
      f(c < cols && e >= lower, e);
    }
    for (unsigned base = 0; base < n_valid; base += kBlock) {
      const unsigned i = base + t;
      const uint64_t e = i < n_valid ? make_entry(values[i], ids[i]) : 0;
      f(i < n_valid && e >= lower, e);
    }
  };
  // Nothing in the chunk beats the running k (the usual case late in the vocabulary): no change.
  if (full && pass1_count == n_valid) return;
  unsigned n_buf = pass1_count;
  uint64_t threshold = 1;
  bool threshold_known = false;
  if (!(full && pass1_count <= kCapacity)) {
    // The bound: the k-th largest of (group maxima ∪ running entries), buf[0, n_valid) still
    // holding the latter. There are >= k of them when total > k (min(cols, 256·G) groups are
    // non-empty and 256·G >= k).
    if (t == 0) sh.count = n_valid;
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) warp_append(group_max[g] != 0, group_max[g], &sh.count, to_buf);
    __syncthreads();
    const unsigned n_bound = sh.count;
    if (total > k) {
      lower = radix_select(
          [&](auto&& f) {
            for (unsigned base = 0; base < n_bound; base += kBlock) {
              const unsigned i = base + t;
              f(i < n_bound, i < n_bound ? sh.buf[i] : 0);
            }
          },
          k, sh);
    }
    // Pass 2: gather every candidate >= lower (the running ones from global memory again).
    __syncthreads();
    if (t == 0) sh.count = 0;
    __syncthreads();
    visit_global([&](bool pred, uint64_t e) { warp_append(pred, e, &sh.count, to_buf); });
    __syncthreads();
    n_buf = sh.count;
    __syncthreads();
    if (n_buf > kCapacity) {
      // Rare: too many above the bound. Select over global memory, then gather exactly k_sel.
      threshold = radix_select(visit_global, k_sel, sh);
      threshold_known = true;
      lower = threshold;
      if (t == 0) sh.count = 0;
      __syncthreads();
      visit_global([&](bool pred, uint64_t e) { warp_append(pred, e, &sh.count, to_buf); });
      __syncthreads();
      n_buf = sh.count;
    }
  }
  if (!threshold_known && n_buf > k_sel) {
    threshold = radix_select(
        [&](auto&& f) {
          for (unsigned base = 0; base < n_buf; base += kBlock) {
            const unsigned i = base + t;
            f(i < n_buf, i < n_buf ? sh.buf[i] : 0);
          }
        },
        k_sel, sh);
  }

  // The new state: the k_sel entries >= threshold into slots [0, k_sel), the rest empty. Every
  // read of the old state happened before the last barrier.
  __syncthreads();
  if (t == 0) sh.count = 0;
  __syncthreads();
  auto to_state = [&](unsigned i, uint64_t e) {
    if (i < k) {
      values[i] = entry_value(e);
      ids[i] = entry_id(e);
    }
  };
  for (unsigned base = 0; base < n_buf; base += kBlock) {
    const unsigned i = base + t;
    const uint64_t e = i < n_buf ? sh.buf[i] : 0;
    warp_append(i < n_buf && e >= threshold, e, &sh.count, to_state);
  }
  for (unsigned i = k_sel + t; i < k; i += kBlock) {
    values[i] = -INFINITY;
    ids[i] = -1;
  }
}

// One block per row: sort the row's k entries (descending, bitonic over n = k rounded up to a
// power of two, empty slots = 0 sort last), then ids and value - log-sum-exp.
__global__ void __launch_bounds__(kBlock)
    finish_kernel(TopKLogSoftmaxState s, unsigned n, int32_t* ids_out, float* log_probs_out,
                  float* log_sum_exp_out) {
  __shared__ uint64_t e[kMaxTopK];
  const int64_t r = blockIdx.x;
  const unsigned k = static_cast<unsigned>(s.k);
  const float* values = s.values + r * s.k;
  const int32_t* ids = s.ids + r * s.k;
  for (unsigned i = threadIdx.x; i < n; i += kBlock)
    e[i] = i < k && ids[i] >= 0 ? make_entry(values[i], ids[i]) : 0;
  __syncthreads();
  for (unsigned size = 2; size <= n; size <<= 1) {
    for (unsigned stride = size / 2; stride > 0; stride >>= 1) {
      for (unsigned i = threadIdx.x; i < n; i += kBlock) {
        const unsigned j = i ^ stride;
        if (j > i) {
          const bool descending = (i & size) == 0;
          const uint64_t a = e[i], b = e[j];
          if ((a < b) == descending) {
            e[i] = b;
            e[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
  const float lse = s.max[r] + logf(s.sum[r]);
  for (unsigned i = threadIdx.x; i < k; i += kBlock) {
    const uint64_t v = e[i];
    ids_out[r * s.k + i] = v == 0 ? -1 : entry_id(v);
    log_probs_out[r * s.k + i] = v == 0 ? -INFINITY : entry_value(v) - lse;
  }
  if (log_sum_exp_out != nullptr && threadIdx.x == 0) log_sum_exp_out[r] = lse;
}

// One thread per row: the shared host/device estimate of priority_sampling.hpp (k is small).
__global__ void priority_estimates_kernel(const int32_t* ids, const float* key_lp, int64_t rows,
                                          int64_t n, int64_t k, uint64_t seed,
                                          int64_t first_row_key, int32_t* ids_out,
                                          float* log_probs_out) {
  const int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (r >= rows) return;
  priority_estimates_row(ids + r * n, key_lp + r * n, k, n > k, seed, first_row_key + r,
                         ids_out + r * k, log_probs_out + r * k);
}

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

void check_state(const TopKLogSoftmaxState& s, const char* op) {
  REFINERY_CHECK(s.k >= 1 && s.k <= kMaxTopK, op, ": k = ", s.k, ", supported 1..", kMaxTopK);
  REFINERY_CHECK(s.rows >= 0 && s.rows < (int64_t{1} << 31), op, ": rows = ", s.rows);
  REFINERY_CHECK(s.rows == 0 || (s.max && s.sum && s.values && s.ids), op,
                 ": null state pointer");
}

}  // namespace

void top_k_log_softmax_begin(const TopKLogSoftmaxState& state, void* stream) {
  check_state(state, "top_k_log_softmax_begin");
  if (state.rows == 0) return;
  const int64_t n = state.rows * state.k;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + kBlock - 1) / kBlock, 4096));
  begin_kernel<<<blocks, kBlock, 0, as_stream(stream)>>>(state);
  REFINERY_CUDA_CHECK_LAUNCH("top_k_log_softmax_begin");
}

void top_k_log_softmax_update(const TopKLogSoftmaxState& state, const float* logits, int64_t ld,
                              int64_t cols, int64_t first_col, void* stream) {
  const char* op = "top_k_log_softmax_update";
  check_state(state, op);
  REFINERY_CHECK(cols >= 0 && ld >= cols && first_col >= 0, op, ": cols = ", cols, ", ld = ", ld,
                 ", first_col = ", first_col);
  REFINERY_CHECK(first_col + cols <= (int64_t{1} << 31) - 1 &&
                     cols + state.k < (int64_t{1} << 31),
                 op, ": ids must fit int32: first_col = ", first_col, ", cols = ", cols);
  if (state.rows == 0 || cols == 0) return;
  REFINERY_CHECK(logits != nullptr, op, ": null logits");
  const auto grid = static_cast<unsigned>(state.rows);
  cudaStream_t st = as_stream(stream);
  auto launch = [&](auto kernel) { kernel<<<grid, kBlock, 0, st>>>(state, logits, ld, cols, first_col); };
  if (state.k <= kBlock)
    launch(state.sampled ? update_kernel<1, true> : update_kernel<1, false>);
  else if (state.k <= 2 * kBlock)
    launch(state.sampled ? update_kernel<2, true> : update_kernel<2, false>);
  else
    launch(state.sampled ? update_kernel<4, true> : update_kernel<4, false>);
  REFINERY_CUDA_CHECK_LAUNCH(op);
}

void top_k_log_softmax_finish(const TopKLogSoftmaxState& state, int32_t* ids_out,
                              float* log_probs_out, float* log_sum_exp_out, void* stream) {
  const char* op = "top_k_log_softmax_finish";
  check_state(state, op);
  if (state.rows == 0) return;
  REFINERY_CHECK(ids_out != nullptr && log_probs_out != nullptr, op, ": null output");
  unsigned n = 1;
  while (n < static_cast<unsigned>(state.k)) n <<= 1;
  finish_kernel<<<static_cast<unsigned>(state.rows), kBlock, 0, as_stream(stream)>>>(
      state, n, ids_out, log_probs_out, log_sum_exp_out);
  REFINERY_CUDA_CHECK_LAUNCH(op);
}

void top_k_priority_estimates(const int32_t* ids, const float* key_lp, int64_t rows, int64_t n,
                              int64_t k, uint64_t seed, int64_t first_row_key, int32_t* ids_out,
                              float* log_probs_out, void* stream) {
  const char* op = "top_k_priority_estimates";
  REFINERY_CHECK(k >= 1 && (n == k || n == k + 1) && n <= kMaxTopK && rows >= 0, op, ": k = ", k,
                 ", n = ", n, ", rows = ", rows);
  if (rows == 0) return;
  constexpr int kThreads = 128;
  priority_estimates_kernel<<<static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads, 0,
                              as_stream(stream)>>>(ids, key_lp, rows, n, k, seed, first_row_key,
                                                   ids_out, log_probs_out);
  REFINERY_CUDA_CHECK_LAUNCH(op);
}

}  // namespace refinery::backend::cuda
