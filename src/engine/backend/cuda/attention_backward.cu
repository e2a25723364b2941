// attention_backward on the GPU, whole sequences (S == T; query t sees keys 0..t), GQA, dk != dv.
//
// Approach: strided-batched cuBLAS GEMMs with a materialized f32 score matrix per head, P
// recomputed (the forward saves nothing). Per query head h (kv head h / g, g = H / KV):
//   S  = scale · Q_h · K_hᵀ                 [T, T] f32 (the upper triangle is computed and ignored)
//   P  = causal softmax(S), lse per row     P in the operand type (f32, or bf16 for bf16 inputs)
//   dV += Pᵀ · dO_h
//   dP = dO_h · V_hᵀ                        [T, T] f32
//   dS = P ∘ (dP − D),  D[t] = Σ_d dO[t, d] · O[t, d]   (P recomputed in f32 from S and lse)
//   dQ += scale · dS · K_h,   dK += scale · dSᵀ · Q_h
// GEMMs run in cuBLAS's column-major terms on row-major [T, heads, d] tensors: a head is a matrix
// with leading dimension heads·d. One strided batch covers query heads h = kvh·g + i for fixed i
// and consecutive kv heads kvh (the stride between them is constant: g·d for q, d for k/v), so
// each kv head appears at most once per batch and its gradient is accumulated (beta = 1) over
// the g calls of its query heads. Batches are sized so that the [T, T] scratch stays under
// kScratchBytes. Gradients are accumulated in f32 scratch ([T, H, dk], [T, KV, dk], [T, KV, dv])
// and added to dq/dk/dv once at the end (one rounding for bf16 outputs).
// bf16 inputs: operands bf16 (P and dS rounded to bf16, as FlashAttention does), f32
// accumulation; f32 inputs: plain f32 GEMMs (no TF32), which the CPU comparison tests use.
// Cost: 5 GEMMs of T·T·d per head (about 2x the causal minimum, the masked half is computed)
// and O(T²) scratch traffic. bf16 inputs with head widths flash_attention_backward_supports
// therefore go to the fused kernels of flash_attention_backward.cu instead (no score matrix,
// masked tiles skipped); REFINERY_ATTN_BWD=cublas forces this path for them (A/B comparisons).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/cublas_check.hpp"
#include "engine/backend/cuda/flash_attention_backward.hpp"
#include "engine/backend/cuda/kernel_util.cuh"
#include "engine/core/log.hpp"

namespace refinery::backend::cuda {

namespace {

constexpr int64_t kScratchBytes = int64_t{512} << 20;
constexpr int kSoftmaxThreads = 256;

template <typename Y>
__global__ void accumulate_kernel(const float* x, int64_t n, Y* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = from_f32<Y>(to_f32(y[i]) + x[i]);
}

// d_row[t, h] = Σ_d dout[t, h, d] · out[t, h, d]; one warp per (t, h).
template <typename T>
__global__ void d_row_kernel(const T* dout, const T* out, int64_t rows, int dv, float* d_row) {
  const int64_t warp = (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= rows) return;
  float acc = 0.0f;
  for (int c = lane; c < dv; c += 32) acc += to_f32(dout[warp * dv + c]) * to_f32(out[warp * dv + c]);
  for (int o = 16; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) d_row[warp] = acc;
}

__device__ inline float block_reduce(float v, bool is_max, float* scratch) {
  for (int o = 16; o > 0; o /= 2) {
    const float other = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, other) : v + other;
  }
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  float total = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w)
    total = is_max ? fmaxf(total, scratch[w]) : total + scratch[w];
  __syncthreads();
  return total;
}

// Block (t, b): row t of batch b's scores s [T, T] -> p (causal softmax, 0 above the diagonal) and
// lse[b, t] = log Σ_{j <= t} exp(s[t, j]).
template <typename P>
__global__ void causal_softmax_kernel(const float* s, int64_t t_count, P* p, float* lse) {
  __shared__ float scratch[kSoftmaxThreads / 32];
  const int64_t t = blockIdx.x, b = blockIdx.y;
  const float* sr = s + (b * t_count + t) * t_count;
  P* pr = p + (b * t_count + t) * t_count;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j <= t; j += blockDim.x) m = fmaxf(m, sr[j]);
  m = block_reduce(m, true, scratch);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j <= t; j += blockDim.x) sum += expf(sr[j] - m);
  sum = block_reduce(sum, false, scratch);
  const float l = m + logf(sum);
  for (int64_t j = threadIdx.x; j < t_count; j += blockDim.x)
    pr[j] = from_f32<P>(j <= t ? expf(sr[j] - l) : 0.0f);
  if (threadIdx.x == 0) lse[b * t_count + t] = l;
}

// ds[b, t, j] = p · (dp − d_row[t, h_b]) with p = exp(s − lse) for j <= t, else 0;
// h_b = (kv0 + b) · g + gi.
template <typename P>
__global__ void softmax_grad_kernel(const float* s, const float* dp, const float* lse,
                                    const float* d_row, int64_t t_count, int64_t batch,
                                    int64_t heads, int64_t g, int64_t gi, int64_t kv0, P* ds) {
  const int64_t n = batch * t_count * t_count;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t j = i % t_count, bt = i / t_count;
    const int64_t t = bt % t_count, b = bt / t_count;
    float value = 0.0f;
    if (j <= t) {
      const float p = expf(s[i] - lse[bt]);
      value = p * (dp[i] - d_row[t * heads + (kv0 + b) * g + gi]);
    }
    ds[i] = from_f32<P>(value);
  }
}

// Column-major strided-batched C = alpha · op(A) · op(B) + beta · C, f32 output, operands of
// `type` (f32 or bf16), f32 compute (no TF32).
struct Operand {
  const void* p;
  int64_t ld, stride;
};
void batched_gemm(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t m, int64_t n,
                  int64_t k, float alpha, Operand a, Operand b, cudaDataType type, float beta,
                  float* c, int64_t ldc, int64_t stride_c, int64_t batch) {
  constexpr int64_t kMax = int64_t{1} << 31;
  REFINERY_CHECK(m < kMax && n < kMax && k < kMax && a.ld < kMax && b.ld < kMax && ldc < kMax &&
                     batch < kMax,
                 "attention_backward: dimensions exceed cuBLAS's int range");
  REFINERY_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), &alpha, a.p, type,
      static_cast<int>(a.ld), a.stride, b.p, type, static_cast<int>(b.ld), b.stride, &beta, c,
      CUDA_R_32F, static_cast<int>(ldc), stride_c, static_cast<int>(batch), CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
}

// REFINERY_ATTN_BWD: unset, "" or "flash" = the fused kernels where supported; "cublas" = this
// file's GEMM path always. Read on every call so that tests and benchmarks can switch.
bool flash_backward_enabled() {
  const char* choice = std::getenv("REFINERY_ATTN_BWD");
  if (choice == nullptr || choice[0] == '\0' || std::strcmp(choice, "flash") == 0) return true;
  if (std::strcmp(choice, "cublas") == 0) return false;
  static std::atomic<bool> warned{false};
  if (!warned.exchange(true)) {
    log::warn("REFINERY_ATTN_BWD=", choice, " is not one of flash, cublas; using flash");
  }
  return true;
}

}  // namespace

void CudaBackend::accumulate_f32(const float* x, int64_t n, Tensor& y, const char* op) {
  if (n == 0) return;
  dispatch_activation(y.dtype(), op, [&](auto tag) {
    using Y = decltype(tag);
    accumulate_kernel<Y><<<grid_for(n), kThreads, 0, stream_>>>(x, n,
                                                                static_cast<Y*>(y.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, op);
}

void CudaBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                     const Tensor& out, const Tensor& dout, float scale,
                                     Tensor& dq, Tensor& dk, Tensor& dv, GradWrite write,
                                     const Tensor& lse) {
  OpTimer timer(profiler_, stream_, "attention_backward");
  const AttentionSizes sizes = check_attention(Device::kCUDA, q, k, v, out);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, dqk = sizes.dk;
  const int64_t kv_heads = sizes.kv_heads, dvv = sizes.dv;
  REFINERY_CHECK(sizes.s_count == t_count, "attention_backward: whole sequences only (S == T), found ",
                 sizes.s_count, " keys for ", t_count, " queries");
  backend::require_float(Device::kCUDA, dout, out.shape(), "attention_backward dout");
  require_same_dtype(q, dout, "attention_backward");
  const struct {
    Tensor* t;
    std::vector<int64_t> shape;
    const char* what;
  } grads[] = {{&dq, {t_count, heads, dqk}, "attention_backward dq"},
               {&dk, {t_count, kv_heads, dqk}, "attention_backward dk"},
               {&dv, {t_count, kv_heads, dvv}, "attention_backward dv"}};
  for (const auto& g : grads)
    if (g.t->defined()) {
      backend::require_float(Device::kCUDA, *g.t, g.shape, g.what);
      require_same_dtype(q, *g.t, g.what);
    }
  check_attention_lse(Device::kCUDA, lse, heads, t_count, "attention_backward");
  if (t_count == 0 || heads == 0 || (!dq.defined() && !dk.defined() && !dv.defined())) return;
  REFINERY_CHECK(t_count < (int64_t{1} << 31) / 2 && heads < 65536,
                 "attention_backward: ", t_count, " tokens and ", heads,
                 " heads exceed the launch limits");
  const int64_t g = heads / kv_heads;
  const bool bf16 = q.dtype() == DType::kBF16;

  if (bf16 && flash_attention_backward_supports(dqk, dvv) && flash_backward_enabled() &&
      aligned16(q.data()) && aligned16(k.data()) && aligned16(v.data()) && aligned16(out.data()) &&
      aligned16(dout.data()) && (!dq.defined() || aligned16(dq.data())) &&
      (!dk.defined() || aligned16(dk.data())) && (!dv.defined() || aligned16(dv.data()))) {
    FlashAttentionBackwardArgs args{q.data(), k.data(), v.data(), out.data(), dout.data(),
                                    dq.defined() ? dq.mutable_data() : nullptr,
                                    dk.defined() ? dk.mutable_data() : nullptr,
                                    dv.defined() ? dv.mutable_data() : nullptr,
                                    t_count, heads, kv_heads, dqk, dvv, scale, nullptr};
    args.lse = lse.defined() ? lse.data<float>() : nullptr;
    args.overwrite = write == GradWrite::kOverwrite;
    const int64_t bytes = flash_attention_backward_workspace_bytes(args);
    Tensor workspace = empty(DType::kF32, {bytes / 4});
    args.workspace = workspace.mutable_data();
    flash_attention_backward_bf16(args, stream_);
    sync_if_debugging("attention_backward (flash)");
    return;
  }
  // The cuBLAS path below adds its f32 sums into the gradients and recomputes the row lse.
  if (write == GradWrite::kOverwrite)
    for (Tensor* grad : {&dq, &dk, &dv})
      if (grad->defined()) fill_zero(*grad);
  const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
  const int64_t element = bf16 ? 2 : 4;

  // f32 accumulators, zeroed.
  auto zeros = [&](std::vector<int64_t> shape) {
    Tensor t = empty(DType::kF32, std::move(shape));
    if (t.nbytes() > 0)
      REFINERY_CUDA_CHECK(cudaMemsetAsync(t.mutable_data(), 0, t.nbytes(), stream_));
    return t;
  };
  Tensor dq_acc = dq.defined() ? zeros({t_count, heads, dqk}) : Tensor{};
  Tensor dk_acc = dk.defined() ? zeros({t_count, kv_heads, dqk}) : Tensor{};
  Tensor dv_acc = dv.defined() ? zeros({t_count, kv_heads, dvv}) : Tensor{};

  // D = rowsum(dO ∘ O) [T, H].
  Tensor d_row = empty(DType::kF32, {t_count, heads});
  if (dvv > 0) {
    dispatch_activation(q.dtype(), "attention_backward (rowsum)", [&](auto tag) {
      using T = decltype(tag);
      const int64_t threads = t_count * heads * 32;
      d_row_kernel<T><<<static_cast<unsigned>((threads + kThreads - 1) / kThreads), kThreads, 0,
                        stream_>>>(static_cast<const T*>(dout.data()),
                                   static_cast<const T*>(out.data()), t_count * heads,
                                   static_cast<int>(dvv), d_row.mutable_data<float>());
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "attention_backward (rowsum)");
  } else {
    REFINERY_CUDA_CHECK(cudaMemsetAsync(d_row.mutable_data(), 0, d_row.nbytes(), stream_));
  }

  const int64_t tt = t_count * t_count;
  const int64_t per_head = tt * (4 + 4 + element) + t_count * 4;
  const int64_t batch_max = std::clamp<int64_t>(kScratchBytes / per_head, 1, kv_heads);
  Tensor s = empty(DType::kF32, {batch_max, t_count, t_count});
  Tensor dp = empty(DType::kF32, {batch_max, t_count, t_count});
  Tensor p = empty(q.dtype(), {batch_max, t_count, t_count});
  Tensor row_lse = empty(DType::kF32, {batch_max, t_count});
  const auto* qp = static_cast<const std::byte*>(q.data());
  const auto* kp = static_cast<const std::byte*>(k.data());
  const auto* vp = static_cast<const std::byte*>(v.data());
  const auto* dop = static_cast<const std::byte*>(dout.data());

  for (int64_t gi = 0; gi < g; ++gi)
    for (int64_t kv0 = 0; kv0 < kv_heads; kv0 += batch_max) {
      const int64_t nb = std::min(batch_max, kv_heads - kv0);
      const int64_t h0 = kv0 * g + gi;  // query head of batch entry 0
      const Operand qh{qp + h0 * dqk * element, heads * dqk, g * dqk};
      const Operand kh{kp + kv0 * dqk * element, kv_heads * dqk, dqk};
      const Operand vh{vp + kv0 * dvv * element, kv_heads * dvv, dvv};
      const Operand doh{dop + h0 * dvv * element, heads * dvv, g * dvv};
      const Operand ph{p.data(), t_count, tt};
      // Sᵀ (column-major [Tk, Tq]) = scale · Kᵀ-op · Q.
      if (dqk > 0) {
        batched_gemm(cublas_, true, false, t_count, t_count, dqk, scale, kh, qh, type, 0.0f,
                     s.mutable_data<float>(), t_count, tt, nb);
      } else {
        REFINERY_CUDA_CHECK(cudaMemsetAsync(s.mutable_data(), 0, nb * tt * 4, stream_));
      }
      dispatch_activation(q.dtype(), "attention_backward (softmax)", [&](auto tag) {
        using P = decltype(tag);
        causal_softmax_kernel<P>
            <<<dim3(static_cast<unsigned>(t_count), static_cast<unsigned>(nb)), kSoftmaxThreads,
               0, stream_>>>(s.data<float>(), t_count, static_cast<P*>(p.mutable_data()),
                             row_lse.mutable_data<float>());
      });
      REFINERY_CUDA_AFTER_LAUNCH(*this, "attention_backward (softmax)");
      if (dvv > 0) {
        // dVᵀ [dv, Tk] += dOᵀ · P  (P column-major [Tk, Tq], transposed).
        if (dv.defined())
          batched_gemm(cublas_, false, true, dvv, t_count, t_count, 1.0f, doh, ph, type, 1.0f,
                       dv_acc.mutable_data<float>() + kv0 * dvv, kv_heads * dvv, dvv, nb);
        // dPᵀ [Tk, Tq] = Vᵀ-op · dO.
        batched_gemm(cublas_, true, false, t_count, t_count, dvv, 1.0f, vh, doh, type, 0.0f,
                     dp.mutable_data<float>(), t_count, tt, nb);
      } else {
        REFINERY_CUDA_CHECK(cudaMemsetAsync(dp.mutable_data(), 0, nb * tt * 4, stream_));
      }
      if (dqk == 0 || (!dq.defined() && !dk.defined())) continue;
      dispatch_activation(q.dtype(), "attention_backward (softmax grad)", [&](auto tag) {
        using P = decltype(tag);
        softmax_grad_kernel<P><<<grid_for(nb * tt), kThreads, 0, stream_>>>(
            s.data<float>(), dp.data<float>(), row_lse.data<float>(), d_row.data<float>(), t_count,
            nb, heads, g, gi, kv0, static_cast<P*>(p.mutable_data()));
      });
      REFINERY_CUDA_AFTER_LAUNCH(*this, "attention_backward (softmax grad)");
      // dQᵀ [dk, Tq] += scale · K · dSᵀ  (dS column-major [Tk, Tq]).
      if (dq.defined())
        batched_gemm(cublas_, false, false, dqk, t_count, t_count, scale, kh, ph, type, 1.0f,
                     dq_acc.mutable_data<float>() + h0 * dqk, heads * dqk, g * dqk, nb);
      // dKᵀ [dk, Tk] += scale · Q · dS  (dS column-major [Tk, Tq], transposed).
      if (dk.defined())
        batched_gemm(cublas_, false, true, dqk, t_count, t_count, scale, qh, ph, type, 1.0f,
                     dk_acc.mutable_data<float>() + kv0 * dqk, kv_heads * dqk, dqk, nb);
    }

  if (dq.defined()) accumulate_f32(dq_acc.data<float>(), dq.numel(), dq, "attention_backward (dq)");
  if (dk.defined()) accumulate_f32(dk_acc.data<float>(), dk.numel(), dk, "attention_backward (dk)");
  if (dv.defined()) accumulate_f32(dv_acc.data<float>(), dv.numel(), dv, "attention_backward (dv)");
}

}  // namespace refinery::backend::cuda
