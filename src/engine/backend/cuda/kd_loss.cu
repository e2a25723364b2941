// kd_loss on the GPU: the distillation loss and its gradient per row of student logits, the math
// of src/distill/losses.hpp (forward/reverse KL, JSD β, skew KL α, temperature T, hard-label CE;
// dense teacher logits or a sparse top-k teacher with a tail bucket).
//
// One thread block per row (vocab up to a few 100k), three passes over the row:
//   1. log-sum-exps: online max/sum per thread (max and sum in double, exps in f32), merged over
//      the block in a fixed order: lse of s/T (student), t/T (dense teacher), s (CE at T = 1),
//      and for the sparse teacher the lse over the uncached ids (the student's tail bucket).
//   2. the divergence D and S = Σ_b h_b (h_b = Q_b · dD/dQ_b, see losses.cpp): per element in f32
//      from log-probabilities formed in double, summed in double; sparse buckets all in double.
//   3. the gradient, grad_scale · (kd_weight·T·(h_j·[q_j/Q_b] − q_j·S) + ce_weight·(softmax(s)_j −
//      [j == label])), written where the student logit was read (an f32 grad may alias the
//      logits: each element is read and then written by the same thread; sparse cached ids are
//      handled last from copies of their logits taken in step 0). The gradient is f32 or bf16
//      (the activation dtype: the LM head's backward GEMM reads bf16, so no separate convert).
// Dense rows whose length is a multiple of 4 (and 16-byte aligned) are read with 16-byte loads:
// one f32 per thread and load keeps too few bytes in flight to reach HBM bandwidth on these
// 400 KB rows.
// Sparse rows mark their cached ids in a shared-memory bitmap (vocab/8 bytes; opt-in shared
// memory above 48 KiB) so that the tail lse and the gradient pass know each id's bucket. Bucket
// scratch (h_b, cached logits) is global [R, k]. Rows with label -1 get a zero gradient and zero
// terms. Deterministic: fixed per-thread element sets and fixed reduction trees.
// Arguments (labels, cached ids and log-probs) are validated on the host (small downloads), with
// the user errors of the CPU reference.
// Cross-entropy alone (no teacher: the plain training step) on dense 16-byte rows of up to
// kCeMaxVocab logits takes ce_cluster_kernel on compute 9.0: a thread-block cluster of kCeBlocks
// blocks per row, each block holding its part of the row in registers, so the row is read from
// memory once instead of twice (pass 3 above re-reads it).
#include <cooperative_groups.h>

#include <cmath>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kKdThreads = 512;
constexpr double kSparseTailFloor = 1e-8;  // distill::kSparseTailFloor

struct KdParams {
  int64_t vocab = 0, k = 0;  // k: cached ids per row (sparse)
  int divergence = 0;        // Divergence as int
  bool has_teacher = false, has_tail = false;
  bool vec4 = false;         // dense rows: vocab % 4 == 0 and 16-byte aligned row starts
  double inv_t = 1.0, kd_coef = 0.0, ce_coef = 0.0;
  double w_p = 0.0, log_w_p = 0.0, log_w_q = 0.0;
  float grad_scale = 1.0f;
};

// ---- block reductions (fixed order: warp trees, then warps in index order by thread 0) ----

__device__ double block_sum(double v, double* scratch) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += scratch[w];
    scratch[32] = total;
  }
  __syncthreads();
  const double total = scratch[32];
  __syncthreads();
  return total;
}

__device__ double block_max(double v, double* scratch) {
  for (int o = 16; o > 0; o /= 2) v = fmax(v, __shfl_down_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = scratch[0];
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) total = fmax(total, scratch[w]);
    scratch[32] = total;
  }
  __syncthreads();
  const double total = scratch[32];
  __syncthreads();
  return total;
}

// A running log-sum-exp: max m and Σ exp(x − m).
struct Lse {
  double m = -INFINITY, s = 0.0;
  __device__ void add(double x) {
    if (x > m) {
      s = s * static_cast<double>(expf(static_cast<float>(m - x))) + 1.0;  // m = -inf: s = 1
      m = x;
    } else if (x > -INFINITY) {
      s += static_cast<double>(expf(static_cast<float>(x - m)));
    }
  }
};

// The block's log Σ exp over every thread's elements (-inf for none).
__device__ double block_lse(Lse a, double* scratch) {
  const double m = block_max(a.m, scratch);
  if (m == -INFINITY) return m;
  const double scaled = a.m == -INFINITY ? 0.0 : a.s * exp(a.m - m);
  return m + log(block_sum(scaled, scratch));
}

// x * diff with 0 * anything = 0 (0 · log 0 terms vanish).
__device__ inline float weighted_f(float x, float diff) { return x > 0.0f ? x * diff : 0.0f; }
__device__ inline double weighted_d(double x, double diff) { return x > 0.0 ? x * diff : 0.0; }

struct Term {
  double d, h;
};

// One vocabulary element's (d_j, h_j) from its log-probabilities (lp teacher, lq student), f32
// element math (the per-element arithmetic of the dense rows).
__device__ Term element_term(const KdParams& p, double lp, double lq) {
  const float pf = expf(static_cast<float>(lp)), qf = expf(static_cast<float>(lq));
  switch (p.divergence) {
    case static_cast<int>(Divergence::kForwardKl):
      return {weighted_f(pf, static_cast<float>(lp - lq)), -pf};
    case static_cast<int>(Divergence::kReverseKl): {
      const float d = weighted_f(qf, static_cast<float>(lq - lp));
      return {d, d};
    }
    default: {
      const float a = static_cast<float>(p.log_w_p + lp), b = static_cast<float>(p.log_w_q + lq);
      const float hi = fmaxf(a, b);
      const double lm = hi == -INFINITY ? -INFINITY : hi + log1pf(expf(fminf(a, b) - hi));
      const float wp = static_cast<float>(p.w_p);
      if (p.divergence == static_cast<int>(Divergence::kJsd)) {
        const float q_term = weighted_f(qf, static_cast<float>(lq - lm));
        return {wp * weighted_f(pf, static_cast<float>(lp - lm)) + (1.0f - wp) * q_term,
                (1.0f - wp) * q_term};
      }
      return {weighted_f(pf, static_cast<float>(lp - lm)),
              -(1.0f - wp) * weighted_f(pf, expf(static_cast<float>(lq - lm)))};
    }
  }
}

// One bucket's (d_b, h_b) in double (the sparse buckets; a port of losses.cpp's bucket_term).
__device__ Term bucket_term(const KdParams& p, double lp, double lq) {
  const double pd = exp(lp), qd = exp(lq);
  switch (p.divergence) {
    case static_cast<int>(Divergence::kForwardKl):
      return {weighted_d(pd, lp - lq), -pd};
    case static_cast<int>(Divergence::kReverseKl): {
      const double d = weighted_d(qd, lq - lp);
      return {d, d};
    }
    default: {
      const double a = p.log_w_p + lp, b = p.log_w_q + lq;
      const double hi = fmax(a, b);
      const double lm = hi == -INFINITY ? hi : hi + log1p(exp(fmin(a, b) - hi));
      if (p.divergence == static_cast<int>(Divergence::kJsd)) {
        const double q_term = weighted_d(qd, lq - lm);
        return {p.w_p * weighted_d(pd, lp - lm) + (1.0 - p.w_p) * q_term, (1.0 - p.w_p) * q_term};
      }
      return {weighted_d(pd, lp - lm), -(1.0 - p.w_p) * weighted_d(pd, exp(lq - lm))};
    }
  }
}

// The hard-label cross-entropy part of element j's gradient (temperature 1):
// ce_coef · (softmax(s)_j − [j == label]), s_j − lse in double, the exp in f32.
__device__ inline float ce_gradient(double s_j, double lse1, bool is_label, float ce_coef) {
  return ce_coef * (expf(static_cast<float>(s_j - lse1)) - (is_label ? 1.0f : 0.0f));
}

// Zero gradient and terms for an uncounted row; true when the row is uncounted.
template <typename G>
__device__ bool skip_row(const KdParams& p, int32_t label, G* g, float* terms) {
  if (label != -1) return false;
  if (g != nullptr)
    for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x) g[j] = from_f32<G>(0.0f);
  if (threadIdx.x == 0) {
    terms[0] = 0.0f;
    terms[1] = 0.0f;
  }
  return true;
}

// Calls f(j, s_j, t_j) for this thread's elements of a row, in a fixed order (t_j = 0 without a
// teacher): four elements per 16-byte load when p.vec4, else one per load.
template <typename F>
__device__ void for_row_elements(const KdParams& p, const float* s, const float* t, F&& f) {
  if (p.vec4) {
    const float4* s4 = reinterpret_cast<const float4*>(s);
    const float4* t4 = reinterpret_cast<const float4*>(t);
    for (int64_t i = threadIdx.x; i < p.vocab / 4; i += blockDim.x) {
      const float4 a = s4[i];
      const float4 b = t4 != nullptr ? t4[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      f(4 * i, a.x, b.x);
      f(4 * i + 1, a.y, b.y);
      f(4 * i + 2, a.z, b.z);
      f(4 * i + 3, a.w, b.w);
    }
  } else {
    for (int64_t j = threadIdx.x; j < p.vocab; j += blockDim.x)
      f(j, s[j], t != nullptr ? t[j] : 0.0f);
  }
}

// Dense teacher (or none: has_teacher false). Gradient element type G: float or __nv_bfloat16.
template <typename G>
__global__ void kd_dense_kernel(const float* student, const float* teacher, const int32_t* labels,
                                KdParams p, float* row_terms, G* grad) {
  __shared__ double scratch[33];
  const int64_t r = blockIdx.x, v = p.vocab;
  const float* s = student + r * v;
  const float* t = p.has_teacher ? teacher + r * v : nullptr;
  G* g = grad != nullptr ? grad + r * v : nullptr;
  const int32_t y = labels[r];
  if (skip_row(p, y, g, row_terms + 2 * r)) return;
  const float s_label = s[y];
  __syncthreads();  // s[y] is read before any thread overwrites it

  // At T = 1 the tempered student lse is the CE lse: one accumulator serves both.
  const bool plain_t = p.inv_t == 1.0;
  Lse lq_acc, lp_acc, l1_acc;
  for_row_elements(p, s, t, [&](int64_t, float sf, float tf) {
    const double sj = sf;
    lq_acc.add(sj * p.inv_t);
    if (!plain_t) l1_acc.add(sj);
    if (t != nullptr) lp_acc.add(static_cast<double>(tf) * p.inv_t);
  });
  const double lse_q = block_lse(lq_acc, scratch);
  const double lse1 = plain_t ? lse_q : block_lse(l1_acc, scratch);
  const double lse_p = t != nullptr ? block_lse(lp_acc, scratch) : 0.0;

  double d_sum = 0.0, h_sum = 0.0;
  if (t != nullptr) {
    double d_part = 0.0, h_part = 0.0;
    for_row_elements(p, s, t, [&](int64_t, float sf, float tf) {
      const Term term = element_term(p, static_cast<double>(tf) * p.inv_t - lse_p,
                                     static_cast<double>(sf) * p.inv_t - lse_q);
      d_part += term.d;
      h_part += term.h;
    });
    d_sum = block_sum(d_part, scratch);
    h_sum = block_sum(h_part, scratch);
  }
  if (threadIdx.x == 0) {
    row_terms[2 * r] = static_cast<float>(d_sum);
    row_terms[2 * r + 1] = static_cast<float>(lse1 - static_cast<double>(s_label));
  }
  if (g == nullptr) return;
  const float hs = static_cast<float>(h_sum);
  const float kd_coef = static_cast<float>(p.kd_coef), ce_coef = static_cast<float>(p.ce_coef);
  for_row_elements(p, s, t, [&](int64_t j, float sf, float tf) {
    const double sj = sf;
    float value = 0.0f;
    if (t != nullptr) {
      const double lq = sj * p.inv_t - lse_q;
      const Term term = element_term(p, static_cast<double>(tf) * p.inv_t - lse_p, lq);
      value = kd_coef * (static_cast<float>(term.h) - expf(static_cast<float>(lq)) * hs);
    }
    if (ce_coef != 0.0f)
      value += ce_gradient(sj, lse1, j == y, ce_coef);
    g[j] = from_f32<G>(p.grad_scale * value);
  });
}

// ---- cross-entropy alone, the row read once (compute 9.0) -------------------------------------
// Row r is shared by the kCeBlocks blocks of one cluster: block `rank` owns the 16-byte quads
// [q0, q1) of the row (a 1/kCeBlocks slice) and its thread t the quads q0 + k·kCeThreads + t,
// k < kCeLoads, loaded once into registers. The row max, then Σ exp(s − max), are reduced per
// block (block_max / block_sum, fixed trees) and merged over the cluster in rank order through
// distributed shared memory, so every block gets the same lse (deterministic). Then each thread
// writes its quads' gradient grad_scale · ce_coef · (exp(s − lse) − [j == label]) from the
// registers, with the per-element math of kd_dense_kernel. s[label] is read before the first
// cluster barrier, so an f32 gradient aliasing the logits is safe (blocks write only their own
// slice, after the barriers).
// 8 blocks (the portable cluster maximum) of 256 threads at 128 registers: two blocks per SM, so
// one row's reductions and cluster barriers overlap another row's loads.
constexpr int kCeBlocks = 8, kCeThreads = 256, kCeLoads = 16;
constexpr int64_t kCeMaxVocab = int64_t{4} * kCeBlocks * kCeThreads * kCeLoads;  // 131,072

// Four gradient values at `at` (16-byte aligned f32, 8-byte aligned bf16).
template <typename G>
__device__ inline void store_quad(G* at, float a, float b, float c, float d) {
  if constexpr (sizeof(G) == 4) {
    *reinterpret_cast<float4*>(at) = make_float4(a, b, c, d);
  } else {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
    uint2 bits;
    bits.x = *reinterpret_cast<const uint32_t*>(&lo);
    bits.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(at) = bits;
  }
}

template <typename G>
__global__ void __launch_bounds__(kCeThreads, 2)
    ce_cluster_kernel(const float* student, const int32_t* labels, KdParams p, float* row_terms,
                      G* grad) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  const cg::cluster_group cluster = cg::this_cluster();
  __shared__ double scratch[33];
  __shared__ double slot;  // this block's partial, read by the cluster's blocks
  // The cluster's blocks' `value`s merged in rank order by `op`; the same result in every block.
  const auto cluster_merge = [&](double value, auto op) {
    if (threadIdx.x == 0) slot = value;
    cluster.sync();
    double total = *cluster.map_shared_rank(&slot, 0);
    for (int q = 1; q < kCeBlocks; ++q) total = op(total, *cluster.map_shared_rank(&slot, q));
    cluster.sync();  // all reads done before a slot is rewritten or its block exits
    return total;
  };
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t r = blockIdx.x / kCeBlocks, v = p.vocab;
  const int64_t quads = v / 4, per_block = (quads + kCeBlocks - 1) / kCeBlocks;
  const int64_t q0 = rank * per_block, q1 = min(quads, q0 + per_block);
  const float4* s4 = reinterpret_cast<const float4*>(student + r * v);
  G* g = grad != nullptr ? grad + r * v : nullptr;
  const int32_t y = labels[r];  // the same for the whole cluster
  if (y == -1) {
    if (g != nullptr)
      for (int64_t i = q0 + threadIdx.x; i < q1; i += kCeThreads)
        store_quad(g + 4 * i, 0.0f, 0.0f, 0.0f, 0.0f);
    if (rank == 0 && threadIdx.x == 0) row_terms[2 * r] = row_terms[2 * r + 1] = 0.0f;
    return;
  }
  const bool writes_terms = rank == 0 && threadIdx.x == 0;
  const float s_label = writes_terms ? student[r * v + y] : 0.0f;
  float4 x[kCeLoads];
#pragma unroll
  for (int k = 0; k < kCeLoads; ++k) {
    const int64_t i = q0 + int64_t{k} * kCeThreads + threadIdx.x;
    x[k] = i < q1 ? s4[i] : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
  }
  float mx = -INFINITY;
#pragma unroll
  for (int k = 0; k < kCeLoads; ++k)
    mx = fmaxf(mx, fmaxf(fmaxf(x[k].x, x[k].y), fmaxf(x[k].z, x[k].w)));
  const double row_max =
      cluster_merge(block_max(mx, scratch), [](double a, double b) { return fmax(a, b); });
  const float m = static_cast<float>(row_max);  // exact: the max of f32 values
  float part = 0.0f;
#pragma unroll
  for (int k = 0; k < kCeLoads; ++k)  // exp(-inf - m) = 0 for the padding
    part += (expf(x[k].x - m) + expf(x[k].y - m)) + (expf(x[k].z - m) + expf(x[k].w - m));
  const double sum =
      cluster_merge(block_sum(part, scratch), [](double a, double b) { return a + b; });
  const double lse1 = row_max + log(sum);
  if (writes_terms) {
    row_terms[2 * r] = 0.0f;
    row_terms[2 * r + 1] = static_cast<float>(lse1 - static_cast<double>(s_label));
  }
  if (g == nullptr) return;
  const float ce_coef = static_cast<float>(p.ce_coef);
  const auto value = [&](float sf, int64_t j) {
    return p.grad_scale * ce_gradient(static_cast<double>(sf), lse1, j == y, ce_coef);
  };
#pragma unroll
  for (int k = 0; k < kCeLoads; ++k) {
    const int64_t i = q0 + int64_t{k} * kCeThreads + threadIdx.x;
    if (i < q1)
      store_quad(g + 4 * i, value(x[k].x, 4 * i), value(x[k].y, 4 * i + 1),
                 value(x[k].z, 4 * i + 2), value(x[k].w, 4 * i + 3));
  }
#else
  __trap();  // clusters need compute 9.0; the launcher checks the device first
#endif
}

// Sparse top-k teacher. bucket_h [R, k] (double), cached_s [R, k] (f32) are scratch; dynamic
// shared memory: the bitmap of cached ids, ceil(vocab / 32) words.
template <typename G>
__global__ void kd_sparse_kernel(const float* student, const int32_t* ids, const float* lps,
                                 const int32_t* labels, KdParams p, double* bucket_h,
                                 float* cached_s, float* row_terms, G* grad) {
  extern __shared__ uint32_t bits[];
  __shared__ double scratch[33];
  const int64_t r = blockIdx.x, v = p.vocab, k = p.k;
  const float* s = student + r * v;
  G* g = grad != nullptr ? grad + r * v : nullptr;
  const int32_t* row_ids = ids + r * k;
  const float* row_lps = lps + r * k;
  double* hb = bucket_h + r * k;
  float* cs = cached_s + r * k;
  const int32_t y = labels[r];
  if (skip_row(p, y, g, row_terms + 2 * r)) return;
  const float s_label = s[y];
  const int64_t words = (v + 31) / 32;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) bits[w] = 0u;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const int32_t id = row_ids[i];
    atomicOr(&bits[id >> 5], 1u << (id & 31));
    cs[i] = s[id];
  }
  __syncthreads();

  // 1. Student lse (all ids), tail lse (uncached ids), CE lse (T = 1).
  Lse lq_acc, tail_acc, l1_acc;
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
    const double sj = s[j];
    const double z = sj * p.inv_t;
    lq_acc.add(z);
    l1_acc.add(sj);
    if (((bits[j >> 5] >> (j & 31)) & 1u) == 0u) tail_acc.add(z);
  }
  const double lse_q = block_lse(lq_acc, scratch);
  const double lse1 = block_lse(l1_acc, scratch);
  const double lse_tail = p.has_tail ? block_lse(tail_acc, scratch) : -INFINITY;

  // 2. Teacher buckets: tail = max(1 − Σ P_i, floor), tempered, renormalized over the buckets.
  double known_part = 0.0, hi_part = -INFINITY;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    known_part += exp(static_cast<double>(row_lps[i]));
    hi_part = fmax(hi_part, static_cast<double>(row_lps[i]) * p.inv_t);
  }
  const double known = block_sum(known_part, scratch);
  const double lp_tail_raw =
      p.has_tail ? log(fmax(1.0 - known, kSparseTailFloor)) * p.inv_t : -INFINITY;
  const double hi = fmax(block_max(hi_part, scratch), lp_tail_raw);
  double z_part = 0.0;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x)
    z_part += exp(static_cast<double>(row_lps[i]) * p.inv_t - hi);
  double z = block_sum(z_part, scratch);
  if (p.has_tail) z += exp(lp_tail_raw - hi);
  const double lz = hi + log(z);
  double d_part = 0.0, h_part = 0.0;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const Term term = bucket_term(p, static_cast<double>(row_lps[i]) * p.inv_t - lz,
                                  static_cast<double>(cs[i]) * p.inv_t - lse_q);
    d_part += term.d;
    h_part += term.h;
    hb[i] = term.h;
  }
  double d_sum = block_sum(d_part, scratch);
  double h_sum = block_sum(h_part, scratch);
  const double lq_tail = lse_tail - lse_q;
  double h_tail = 0.0;
  if (p.has_tail) {
    const Term term = bucket_term(p, lp_tail_raw - lz, lq_tail);
    d_sum += term.d;
    h_sum += term.h;
    h_tail = term.h;
  }
  if (threadIdx.x == 0) {
    row_terms[2 * r] = static_cast<float>(d_sum);
    row_terms[2 * r + 1] = static_cast<float>(lse1 - static_cast<double>(s_label));
  }
  if (g == nullptr) return;

  // 3. Gradient: uncached ids here, cached ids below from their saved logits.
  const float kd_coef = static_cast<float>(p.kd_coef), ce_coef = static_cast<float>(p.ce_coef);
  const float hs = static_cast<float>(h_sum), ht = static_cast<float>(h_tail);
  for (int64_t j = threadIdx.x; j < v; j += blockDim.x) {
    if ((bits[j >> 5] >> (j & 31)) & 1u) continue;
    const double sj = s[j];
    const double lq = sj * p.inv_t - lse_q;
    const float qj = expf(static_cast<float>(lq));
    const float own = qj > 0.0f ? expf(static_cast<float>(lq - lq_tail)) * ht : 0.0f;
    float value = kd_coef * (own - qj * hs);
    if (ce_coef != 0.0f)
      value += ce_gradient(sj, lse1, j == y, ce_coef);
    g[j] = from_f32<G>(p.grad_scale * value);
  }
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    const int32_t j = row_ids[i];
    const double sj = cs[i];
    const float qj = expf(static_cast<float>(sj * p.inv_t - lse_q));
    float value = kd_coef * (static_cast<float>(hb[i]) - qj * hs);
    if (ce_coef != 0.0f)
      value += ce_gradient(sj, lse1, j == y, ce_coef);
    g[j] = from_f32<G>(p.grad_scale * value);
  }
}


std::vector<float> host_f32(const Tensor& t) {
  const Tensor h = t.device() == Device::kCPU ? t : t.to(Device::kCPU);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

// expand_top_k (losses.hpp, "tail prior"): one block per row. The two cached sums (teacher mass,
// prior mass) in double with the fixed-order block_sum; then every id gets the tail value, and
// after a barrier the cached ids are overwritten by their log-probs (same block, so the barrier
// orders the global writes).
constexpr int kExpandThreads = 256;

__global__ void expand_top_k_kernel(const int32_t* ids, const float* lps, const float* log_prior,
                                    int64_t k, int64_t vocab, float* out) {
  __shared__ double scratch[33];
  const int64_t r = blockIdx.x;
  const int32_t* row_ids = ids + r * k;
  const float* row_lps = lps + r * k;
  float* row_out = out + r * vocab;
  double known = 0.0, prior_cached = 0.0;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
    known += exp(static_cast<double>(row_lps[i]));
    prior_cached += exp(static_cast<double>(log_prior[row_ids[i]]));
  }
  known = block_sum(known, scratch);
  prior_cached = block_sum(prior_cached, scratch);
  if (k < vocab) {
    const double base = log(fmax(1.0 - known, kSparseTailFloor)) -
                        log(fmax(1.0 - prior_cached, kSparseTailFloor));
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x)
      row_out[j] = static_cast<float>(base + static_cast<double>(log_prior[j]));
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x) row_out[row_ids[i]] = row_lps[i];
}

}  // namespace

void CudaBackend::kd_loss(const Tensor& student_logits, const Tensor& teacher_logits,
                          const Tensor& teacher_ids, const Tensor& teacher_log_probs,
                          const Tensor& labels, const KdLossOptions& options, float grad_scale,
                          Tensor& row_terms, Tensor& grad) {
  OpTimer timer(profiler_, stream_, "kd_loss");
  validate_kd_loss_options(options);
  REFINERY_CHECK(student_logits.ndim() == 2, "kd_loss: student logits must be f32 [R, V], found ",
                 student_logits.describe());
  const int64_t rows = student_logits.size(0), vocab = student_logits.size(1);
  require_f32(student_logits, {rows, vocab}, "kd_loss student logits");
  REFINERY_CHECK(vocab >= 1 && vocab < (int64_t{1} << 31), "kd_loss: vocabulary of ", vocab);
  require_i32(labels, {rows}, "kd_loss labels");
  require_f32(row_terms, {rows, 2}, "kd_loss row_terms");
  if (grad.defined()) {
    backend::require_float(Device::kCUDA, grad, {rows, vocab}, "kd_loss grad");
    REFINERY_CHECK(grad.dtype() == DType::kF32 || grad.dtype() == DType::kBF16,
                   "kd_loss: grad must be f32 or bf16, found ", grad.describe());
  }
  const bool dense = teacher_logits.defined(), sparse = teacher_ids.defined();
  REFINERY_CHECK(!(dense && sparse), "kd_loss: give either dense teacher logits or sparse ids");
  REFINERY_CHECK(dense || sparse || options.kd_weight == 0.0,
                 "kd_loss: kd_weight is ", options.kd_weight, " but no teacher was given");
  if (dense) require_f32(teacher_logits, {rows, vocab}, "kd_loss teacher logits");
  int64_t k = 0;
  if (sparse) {
    REFINERY_CHECK(teacher_ids.ndim() == 2 && teacher_ids.size(0) == rows,
                   "kd_loss: teacher ids must be i32 [", rows, ", k], found ",
                   teacher_ids.describe());
    k = teacher_ids.size(1);
    require_i32(teacher_ids, {rows, k}, "kd_loss teacher ids");
    require_f32(teacher_log_probs, {rows, k}, "kd_loss teacher log-probs");
    if (k < 1 || k > vocab)
      throw_user_error("kd_loss: the teacher cache has top-k = ", k,
                       ", expected 1 <= k <= vocab (", vocab,
                       "); the cache was made for another vocabulary or is damaged");
  }

  // Host checks: labels, and the cache's ids (in range, distinct per row) and log-probs (finite).
  const std::vector<int32_t> y = host_i32(labels);
  for (int64_t r = 0; r < rows; ++r)
    if (y[r] < -1 || y[r] >= vocab)
      throw_user_error("kd_loss: label of row ", r, " is ", y[r], ", expected a token id in [0, ",
                       vocab,
                       ") or -1 to ignore the position; check that the data's tokenizer matches "
                       "the model's vocabulary");
  if (sparse) {
    const std::vector<int32_t> ids = host_i32(teacher_ids);
    const std::vector<float> lps = host_f32(teacher_log_probs);
    check_top_k_rows(ids.data(), lps.data(), rows, k, vocab, "kd_loss");
  }
  if (rows == 0) return;

  KdParams p;
  p.vocab = vocab;
  p.k = k;
  p.divergence = static_cast<int>(options.divergence);
  p.has_teacher = dense || sparse;
  p.has_tail = sparse && k < vocab;
  p.inv_t = 1.0 / options.temperature;
  p.kd_coef = options.kd_weight * options.temperature;
  p.ce_coef = options.ce_weight;
  if (options.divergence == Divergence::kJsd) p.w_p = options.beta;
  if (options.divergence == Divergence::kSkewKl) p.w_p = options.alpha;
  if (p.w_p > 0.0) {
    p.log_w_p = std::log(p.w_p);
    p.log_w_q = std::log1p(-p.w_p);
  }
  p.grad_scale = grad_scale;
  REFINERY_CHECK(rows < (int64_t{1} << 31), "kd_loss: too many rows: ", rows);
  p.vec4 = vocab % 4 == 0 && aligned16(student_logits.data()) &&
           (!dense || aligned16(teacher_logits.data()));
  // The gradient's element type: f32 (may alias the logits) or bf16 (the activation dtype).
  const DType grad_dtype = grad.defined() ? grad.dtype() : DType::kF32;
  if (!p.has_teacher && p.vec4 && vocab <= kCeMaxVocab && rows * kCeBlocks < (int64_t{1} << 31) &&
      (!grad.defined() || aligned16(grad.data())) &&
      refinery::cuda::current_device_compute_major() >= 9) {  // clusters
    dispatch_activation(grad_dtype, "kd_loss (cross-entropy)", [&](auto tag) {
      using G = decltype(tag);
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(static_cast<unsigned>(rows * kCeBlocks));
      config.blockDim = dim3(kCeThreads);
      config.stream = stream_;
      cudaLaunchAttribute attribute[1];
      attribute[0].id = cudaLaunchAttributeClusterDimension;
      attribute[0].val.clusterDim.x = kCeBlocks;
      attribute[0].val.clusterDim.y = 1;
      attribute[0].val.clusterDim.z = 1;
      config.attrs = attribute;
      config.numAttrs = 1;
      REFINERY_CUDA_CHECK(cudaLaunchKernelEx(
          &config, ce_cluster_kernel<G>, student_logits.data<float>(), labels.data<int32_t>(), p,
          row_terms.mutable_data<float>(),
          grad.defined() ? static_cast<G*>(grad.mutable_data()) : nullptr));
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "kd_loss (cross-entropy)");
    return;
  }
  if (!sparse) {
    dispatch_activation(grad_dtype, "kd_loss (dense)", [&](auto tag) {
      using G = decltype(tag);
      kd_dense_kernel<G><<<static_cast<unsigned>(rows), kKdThreads, 0, stream_>>>(
          student_logits.data<float>(), dense ? teacher_logits.data<float>() : nullptr,
          labels.data<int32_t>(), p, row_terms.mutable_data<float>(),
          grad.defined() ? static_cast<G*>(grad.mutable_data()) : nullptr);
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "kd_loss (dense)");
    return;
  }
  const std::size_t shared = static_cast<std::size_t>((vocab + 31) / 32) * sizeof(uint32_t);
  int max_shared = 0, device = 0;
  REFINERY_CUDA_CHECK(cudaGetDevice(&device));
  REFINERY_CUDA_CHECK(
      cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  REFINERY_CHECK(shared + 33 * sizeof(double) <= static_cast<std::size_t>(max_shared),
                 "kd_loss: a vocabulary of ", vocab, " needs ", shared,
                 " bytes of shared memory per block for the sparse teacher, the device has ",
                 max_shared);
  Tensor bucket_h = empty(DType::kF64, {rows, k});
  Tensor cached_s = empty(DType::kF32, {rows, k});
  dispatch_activation(grad_dtype, "kd_loss (sparse)", [&](auto tag) {
    using G = decltype(tag);
    if (shared > (48u << 10))
      REFINERY_CUDA_CHECK(cudaFuncSetAttribute(kd_sparse_kernel<G>,
                                               cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(shared)));
    kd_sparse_kernel<G><<<static_cast<unsigned>(rows), kKdThreads, shared, stream_>>>(
        student_logits.data<float>(), teacher_ids.data<int32_t>(),
        teacher_log_probs.data<float>(), labels.data<int32_t>(), p,
        static_cast<double*>(bucket_h.mutable_data()), cached_s.mutable_data<float>(),
        row_terms.mutable_data<float>(),
        grad.defined() ? static_cast<G*>(grad.mutable_data()) : nullptr);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "kd_loss (sparse)");
}

void CudaBackend::expand_top_k(const Tensor& ids, const Tensor& log_probs,
                               const Tensor& log_prior, Tensor& out) {
  OpTimer timer(profiler_, stream_, "expand_top_k");
  REFINERY_CHECK(ids.ndim() == 2 && out.ndim() == 2,
                 "expand_top_k: ids [R, k] and out [R, V], found ", ids.describe(), " and ",
                 out.describe());
  const int64_t rows = ids.size(0), k = ids.size(1), vocab = out.size(1);
  require_i32(ids, {rows, k}, "expand_top_k ids");
  require_f32(log_probs, {rows, k}, "expand_top_k log_probs");
  require_f32(log_prior, {vocab}, "expand_top_k log_prior");
  require_f32(out, {rows, vocab}, "expand_top_k out");
  const std::vector<int32_t> host_ids = host_i32(ids);
  const std::vector<float> host_lps = host_f32(log_probs);
  check_top_k_rows(host_ids.data(), host_lps.data(), rows, k, vocab, "expand_top_k");
  if (rows == 0) return;
  REFINERY_CHECK(rows < (int64_t{1} << 31), "expand_top_k: too many rows: ", rows);
  expand_top_k_kernel<<<static_cast<unsigned>(rows), kExpandThreads, 0, stream_>>>(
      ids.data<int32_t>(), log_probs.data<float>(), log_prior.data<float>(), k, vocab,
      out.mutable_data<float>());
  REFINERY_CUDA_AFTER_LAUNCH(*this, "expand_top_k");
}

}  // namespace refinery::backend::cuda
