// Causal attention on the GPU. bf16 prefill (16 or more queries) with head widths the tiled
// kernel supports runs flash_attention_bf16 (flash_attention.cu: tensor cores, no score matrix).
// Everything else (decode steps, f32 activations, other head widths) runs the straightforward
// kernel below: one thread block per (query t, head h); keys are processed in
// chunks of kChunk with an online softmax in f32:
//   1. scores: each warp takes keys of the chunk, lanes split the dk dims (coalesced K reads),
//      a shuffle reduction gives q·k; times `scale` into shared memory;
//   2. the chunk max updates the running max m; the running sum l and the accumulators are
//      rescaled by exp(m_old - m_new);
//   3. each thread owns up to kDvPerThread output dims and accumulates Σ p_j v_j[d] (coalesced V
//      reads across threads).
// GQA: query head h reads kv head h / (H / KV). Query t sees keys [0, S - T + t].
// Bound: memory (K and V are read once per query and head); dk, dv <= 256.
// Split over the keys (flash-decoding): a decode step has one query, so (query, head) blocks alone
// are too few to fill the GPU (32 blocks for a 7B Llama) and each walks the whole cache. With
// `splits` > 1, block (t, h, s) takes keys [s·n, (s + 1)·n) only and writes its running max m,
// sum l and unnormalized accumulators to f32 partials; attention_combine_kernel merges the splits
// of a (t, h) in split order: M = max_s m_s, out = Σ_s acc_s·e^(m_s − M) / Σ_s l_s·e^(m_s − M)
// (deterministic; a split past a query's visible keys has m = −inf, l = 0 and weighs 0).
#include <cstdlib>
#include <cstring>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/backend/cuda/flash_attention.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kAttnThreads = 128;
constexpr int kChunk = 128;
constexpr int kMaxHeadDim = 256;
constexpr int kDvPerThread = kMaxHeadDim / kAttnThreads;
// Below this many queries (decode) the per-query kernel wastes less than a 64-row query tile.
constexpr int64_t kMinFlashQueries = 16;

// Key splits of a launch: `splits` blocks per (query, head), `keys` keys each; part_ml
// [T, H, splits, 2] (m, l) and part_acc [T, H, splits, dv] f32, both null when splits == 1 (the
// kernel then writes `out` itself).
struct KeySplit {
  int64_t splits = 1, keys = 0;
  float* part_ml = nullptr;
  float* part_acc = nullptr;
};

template <typename T>
__global__ void attention_kernel(const T* q, const T* k, const T* v, int64_t t_count,
                                 int64_t heads, int64_t kv_heads, int64_t s_count, int dk, int dv,
                                 float scale, KeySplit split, T* out) {
  __shared__ float q_row[kMaxHeadDim];
  __shared__ float p[kChunk];
  const int64_t t = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
  const int64_t kvh = h / (heads / kv_heads);
  const int64_t visible = s_count - t_count + t + 1;  // >= 1 since S >= T
  // This block's keys: [first, stop) of the visible ones (empty for a split past them).
  const int64_t first = split.splits > 1 ? s * split.keys : 0;
  const int64_t stop = split.splits > 1 ? min(visible, first + split.keys) : visible;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

  const T* qr = q + (t * heads + h) * dk;
  for (int c = threadIdx.x; c < dk; c += blockDim.x) q_row[c] = to_f32(qr[c]);
  __syncthreads();

  float m = -INFINITY, l = 0.0f;
  float acc[kDvPerThread];
  for (int r = 0; r < kDvPerThread; ++r) acc[r] = 0.0f;

  for (int64_t j0 = first; j0 < stop; j0 += kChunk) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kChunk), stop - j0));
    for (int jj = warp; jj < n; jj += warps) {
      const T* kr = k + ((j0 + jj) * kv_heads + kvh) * dk;
      float dot = 0.0f;
      for (int c = lane; c < dk; c += 32) dot += q_row[c] * to_f32(kr[c]);
      for (int o = 16; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      if (lane == 0) p[jj] = dot * scale;
    }
    __syncthreads();
    float chunk_max = -INFINITY;
    for (int jj = 0; jj < n; ++jj) chunk_max = fmaxf(chunk_max, p[jj]);
    const float m_new = fmaxf(m, chunk_max);
    const float correction = expf(m - m_new);  // 0 on the first chunk (m = -inf)
    __syncthreads();                           // every thread has read the raw scores
    for (int jj = threadIdx.x; jj < n; jj += blockDim.x) p[jj] = expf(p[jj] - m_new);
    __syncthreads();
    float chunk_sum = 0.0f;
    for (int jj = 0; jj < n; ++jj) chunk_sum += p[jj];
    l = l * correction + chunk_sum;
    for (int r = 0; r < kDvPerThread; ++r) {
      const int d = threadIdx.x + r * blockDim.x;
      if (d >= dv) break;
      float a = acc[r] * correction;
      for (int jj = 0; jj < n; ++jj) a += p[jj] * to_f32(v[((j0 + jj) * kv_heads + kvh) * dv + d]);
      acc[r] = a;
    }
    m = m_new;
    __syncthreads();  // p is overwritten by the next chunk
  }
  if (split.splits > 1) {
    const int64_t at = (t * heads + h) * split.splits + s;
    if (threadIdx.x == 0) {
      split.part_ml[2 * at] = m;
      split.part_ml[2 * at + 1] = l;
    }
    for (int r = 0; r < kDvPerThread; ++r) {
      const int d = threadIdx.x + r * blockDim.x;
      if (d < dv) split.part_acc[at * dv + d] = acc[r];
    }
    return;
  }
  T* o = out + (t * heads + h) * dv;
  const float inv = 1.0f / l;
  for (int r = 0; r < kDvPerThread; ++r) {
    const int d = threadIdx.x + r * blockDim.x;
    if (d < dv) o[d] = from_f32<T>(acc[r] * inv);
  }
}

// grid (T, H), kAttnThreads threads: out[t, h, :] from the key splits' partials (header comment).
template <typename T>
__global__ void attention_combine_kernel(const float* part_ml, const float* part_acc,
                                         int64_t heads, int64_t splits, int dv, T* out) {
  const int64_t row = int64_t{blockIdx.x} * heads + blockIdx.y;  // t · H + h
  const float* ml = part_ml + 2 * row * splits;
  float m_max = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) m_max = fmaxf(m_max, ml[2 * s]);  // split 0 sees key 0
  float l = 0.0f;
  for (int64_t s = 0; s < splits; ++s) l += ml[2 * s + 1] * expf(ml[2 * s] - m_max);
  const float inv = 1.0f / l;
  for (int d = threadIdx.x; d < dv; d += blockDim.x) {
    float a = 0.0f;
    for (int64_t s = 0; s < splits; ++s)
      a += part_acc[(row * splits + s) * dv + d] * expf(ml[2 * s] - m_max);
    out[row * dv + d] = from_f32<T>(a * inv);
  }
}

// The key split of a launch of t_count x heads (query, head) blocks over s_count keys: one block
// per pair when that fills the GPU twice over or the cache is short, else enough splits of a
// multiple of 32 keys (at least 64) for about two blocks per SM. REFINERY_ATTN_DECODE_SPLIT=0
// turns the split off (timing comparisons).
int64_t keys_per_split(int64_t t_count, int64_t heads, int64_t s_count, int sms) {
  const int64_t pairs = t_count * heads, want_blocks = 2 * int64_t{sms};
  if (pairs >= want_blocks || s_count < 128) return 0;
  const char* env = std::getenv("REFINERY_ATTN_DECODE_SPLIT");
  if (env != nullptr && std::strcmp(env, "0") == 0) return 0;
  const int64_t splits = (want_blocks + pairs - 1) / pairs;
  const int64_t keys = ((s_count + splits - 1) / splits + 31) / 32 * 32;
  return std::max<int64_t>(keys, 64);
}

// Whether the flash kernels (flash_attention.cu) take these tensors: bf16, at least
// kMinFlashQueries queries (decode steps take the simple kernel), supported widths, 16-byte
// aligned (cp.async).
bool flash_applies(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const AttentionSizes& sizes) {
  return out.dtype() == DType::kBF16 && sizes.t_count >= kMinFlashQueries &&
         flash_attention_supports(sizes.dk, sizes.dv) && aligned16(q.data()) &&
         aligned16(k.data()) && aligned16(v.data()) && aligned16(out.data());
}

}  // namespace

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                            Tensor& out) {
  OpTimer timer(profiler_, stream_, "attention");
  const AttentionSizes sizes = check_attention(Device::kCUDA, q, k, v, out);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, dk = sizes.dk;
  const int64_t s_count = sizes.s_count, kv_heads = sizes.kv_heads, dv = sizes.dv;
  REFINERY_CHECK(dk <= kMaxHeadDim && dv <= kMaxHeadDim, "attention: head widths dk ", dk, ", dv ",
                 dv, " exceed the CUDA kernel's limit of ", kMaxHeadDim);
  REFINERY_CHECK(heads <= 65535 && t_count < (int64_t{1} << 31), "attention: grid of ", t_count,
                 " x ", heads, " exceeds the launch limits");
  if (t_count == 0 || heads == 0) return;
  if (dv == 0) return;
  if (flash_applies(q, k, v, out, sizes)) {
    flash_attention_bf16({q.data(), k.data(), v.data(), out.mutable_data(), t_count, s_count, heads,
                          kv_heads, dk, dv, scale},
                         stream_);
    sync_if_debugging("attention (flash)");
    return;
  }
  KeySplit split;
  split.keys = keys_per_split(t_count, heads, s_count, refinery::cuda::current_device_sm_count());
  Tensor part_ml, part_acc;
  if (split.keys > 0) {
    split.splits = (s_count + split.keys - 1) / split.keys;
    part_ml = empty(DType::kF32, {t_count, heads, split.splits, 2});
    part_acc = empty(DType::kF32, {t_count, heads, split.splits, dv});
    split.part_ml = part_ml.mutable_data<float>();
    split.part_acc = part_acc.mutable_data<float>();
  }
  const dim3 grid(static_cast<unsigned>(t_count), static_cast<unsigned>(heads),
                  static_cast<unsigned>(split.splits));
  dispatch_activation(out.dtype(), "attention", [&](auto tag) {
    using T = decltype(tag);
    attention_kernel<T><<<grid, kAttnThreads, 0, stream_>>>(
        static_cast<const T*>(q.data()), static_cast<const T*>(k.data()),
        static_cast<const T*>(v.data()), t_count, heads, kv_heads, s_count, static_cast<int>(dk),
        static_cast<int>(dv), scale, split, static_cast<T*>(out.mutable_data()));
    if (split.splits > 1)
      attention_combine_kernel<T><<<dim3(static_cast<unsigned>(t_count),
                                         static_cast<unsigned>(heads)),
                                    kAttnThreads, 0, stream_>>>(
          split.part_ml, split.part_acc, heads, split.splits, static_cast<int>(dv),
          static_cast<T*>(out.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "attention");
}

void CudaBackend::attention_with_lse(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                                     Tensor& out, Tensor& lse) {
  const AttentionSizes sizes = check_attention(Device::kCUDA, q, k, v, out);
  REFINERY_CHECK(sizes.s_count == sizes.t_count, "attention_with_lse: whole sequences only "
                 "(S == T), found ", sizes.s_count, " keys for ", sizes.t_count, " queries");
  if (sizes.heads == 0 || sizes.dv == 0 || !flash_applies(q, k, v, out, sizes)) {
    attention(q, k, v, scale, out);  // the simple kernel keeps no row statistics
    lse = Tensor{};
    return;
  }
  OpTimer timer(profiler_, stream_, "attention");
  lse = empty(DType::kF32, {sizes.heads, sizes.t_count});
  FlashAttentionArgs args{q.data(), k.data(), v.data(), out.mutable_data(), sizes.t_count,
                          sizes.s_count, sizes.heads, sizes.kv_heads, sizes.dk, sizes.dv, scale};
  args.lse = lse.mutable_data<float>();
  flash_attention_bf16(args, stream_);
  sync_if_debugging("attention (flash, lse)");
}

}  // namespace refinery::backend::cuda
