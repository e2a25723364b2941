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
#include "engine/backend/cuda/alignment.hpp"
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

template <typename T>
__global__ void attention_kernel(const T* q, const T* k, const T* v, int64_t t_count,
                                 int64_t heads, int64_t kv_heads, int64_t s_count, int dk, int dv,
                                 float scale, T* out) {
  __shared__ float q_row[kMaxHeadDim];
  __shared__ float p[kChunk];
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int64_t kvh = h / (heads / kv_heads);
  const int64_t visible = s_count - t_count + t + 1;  // >= 1 since S >= T
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

  const T* qr = q + (t * heads + h) * dk;
  for (int c = threadIdx.x; c < dk; c += blockDim.x) q_row[c] = to_f32(qr[c]);
  __syncthreads();

  float m = -INFINITY, l = 0.0f;
  float acc[kDvPerThread];
  for (int r = 0; r < kDvPerThread; ++r) acc[r] = 0.0f;

  for (int64_t j0 = 0; j0 < visible; j0 += kChunk) {
    const int n = static_cast<int>(min(static_cast<int64_t>(kChunk), visible - j0));
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
  T* o = out + (t * heads + h) * dv;
  const float inv = 1.0f / l;
  for (int r = 0; r < kDvPerThread; ++r) {
    const int d = threadIdx.x + r * blockDim.x;
    if (d < dv) o[d] = from_f32<T>(acc[r] * inv);
  }
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
  const dim3 grid(static_cast<unsigned>(t_count), static_cast<unsigned>(heads));
  dispatch_activation(out.dtype(), "attention", [&](auto tag) {
    using T = decltype(tag);
    attention_kernel<T><<<grid, kAttnThreads, 0, stream_>>>(
        static_cast<const T*>(q.data()), static_cast<const T*>(k.data()),
        static_cast<const T*>(v.data()), t_count, heads, kv_heads, s_count, static_cast<int>(dk),
        static_cast<int>(dv), scale, static_cast<T*>(out.mutable_data()));
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
