#pragma once
// Priority sampling of a teacher's next-token distribution for the sparse logit cache.
//
// Why. A top-k cache keeps the k most likely ids and lumps the rest into one "tail" bucket, so a
// student trained on it learns nothing about how the tail mass is spread (BENCHMARKS: top-64 KD
// lands 22% above online KD on our teacher). Sparse Logit Sampling (Anshumann et al., 2025) shows
// that SAMPLED teacher ids with importance weights give an unbiased estimate of the full KD
// gradient. We use priority sampling (Duffield, Lund and Thorup, "Priority sampling for
// estimation of arbitrary subset sums", J. ACM 2007), which keeps exactly k ids per row and still
// gives unbiased estimates:
//   for every id i with probability p_i draw u_i ~ U(0, 1] and rank by the priority p_i / u_i;
//   keep the k largest; let tau be the (k+1)-th largest priority (0 if there is none);
//   estimate p_i by max(p_i, tau) for a kept id and by 0 for every other id.
// E[estimate of p_i] = p_i for every i. Likely ids have large priorities, so the head is kept
// exactly (p_i >= tau), and the tail is represented by a few ids, each carrying the mass tau.
// We store a refinement (priority_estimates_row): the head exact, the exactly known tail mass
// shared by the sampled tail ids, so every row is a proper distribution over its k ids and forward
// KL at T = 1 against it is the distillation loss of a sampled target whose gradient (q - p_hat)
// estimates the full one (the ratio estimate of the tail is consistent, not exactly unbiased).
//
// In logs: key_i = log p_i - log u_i = logit_i + E_i - lse, E_i = -log u_i ~ Exp(1). Ranking by
// logit_i + E_i is ranking by priority (lse is common to the row). u_i is a hash of
// (seed, row key, id), so a cache is reproducible and a resumed run draws the same ids.
//
// This header is plain C++ usable from CUDA device code (REFINERY_HOST_DEVICE): the CPU backend and
// the CUDA kernel share the noise and the estimate so they agree up to expf/logf rounding.
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define REFINERY_HOST_DEVICE __host__ __device__
#else
#define REFINERY_HOST_DEVICE
#endif

namespace refinery::backend {

// E = -log u with u = a 24-bit uniform in (0, 1) from a SplitMix64-style mix of (seed, row, id):
// an Exp(1) draw, independent across ids and rows for practical purposes. E is in (0, 17.4].
REFINERY_HOST_DEVICE inline float priority_noise(uint64_t seed, int64_t row_key, int32_t id) {
  uint64_t z = seed ^ (static_cast<uint64_t>(row_key) * 0x9E3779B97F4A7C15ull) ^
               (static_cast<uint64_t>(static_cast<uint32_t>(id)) * 0xD6E8FEB86659FD93ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const float u = (static_cast<float>(z >> 40) + 0.5f) * (1.0f / 16777216.0f);
  return -logf(u);
}

// One row's estimates from its k + 1 largest keys (or k when the row has only k ids: then there
// is no threshold and the estimates are exact).
//   ids [n], key_lp [n]: the ids and key_i - lse (= log p_i + E_i) of the n largest keys, largest
//   first, n = k + 1 (has_threshold) or n = k; E_i recomputed from (seed, row_key, id).
//   out_ids [k], out_lp [k]: the kept ids and their estimates as log-probabilities, most likely
//   first (ties: lower id first). An id of -1 (an empty slot) stays -1 with -inf.
// The estimate improves on plain priority sampling with what the row knows exactly: a kept id
// with p_i >= tau (the "head": kept with certainty) keeps its exact p_i; the head's complement
// T = 1 - Σ_head p_i is the exact tail mass, shared equally by the kept ids below tau (each of
// which priority sampling would estimate as tau; T / n_tail is the ratio estimate with the known
// total). So the head carries no sampling noise and the row sums to 1. With no id below tau (a
// row whose mass is all in the head) the head is renormalized instead.
REFINERY_HOST_DEVICE inline void priority_estimates_row(const int32_t* ids, const float* key_lp,
                                                        int64_t k, bool has_threshold,
                                                        uint64_t seed, int64_t row_key,
                                                        int32_t* out_ids, float* out_lp) {
  const float log_tau = has_threshold && ids[k] >= 0 ? key_lp[k] : -INFINITY;
  // Pass 1: exact log p_i of every kept id (into out_lp); the head's mass; the tail's count.
  float head_mass = 0.0f;
  int64_t n_tail = 0;
  for (int64_t i = 0; i < k; ++i) {
    out_ids[i] = ids[i];
    out_lp[i] = -INFINITY;
    if (ids[i] < 0) continue;
    const float lp = key_lp[i] - priority_noise(seed, row_key, ids[i]);
    out_lp[i] = lp;
    if (lp >= log_tau)
      head_mass += expf(lp);
    else
      ++n_tail;
  }
  // Pass 2: the tail ids share the exact tail mass (floored: log-probs stay finite).
  if (n_tail > 0) {
    const float tail = 1.0f - head_mass;
    const float log_share = logf((tail > 1e-20f ? tail : 1e-20f) / static_cast<float>(n_tail));
    for (int64_t i = 0; i < k; ++i)
      if (out_ids[i] >= 0 && out_lp[i] < log_tau) out_lp[i] = log_share;
  }
  // Pass 3: normalize (a no-op up to rounding when the tail is represented).
  float hi = -INFINITY;
  for (int64_t i = 0; i < k; ++i) hi = out_lp[i] > hi ? out_lp[i] : hi;
  float sum = 0.0f;
  for (int64_t i = 0; i < k; ++i)
    if (out_lp[i] != -INFINITY) sum += expf(out_lp[i] - hi);
  const float log_z = hi + logf(sum);
  for (int64_t i = 0; i < k; ++i)
    if (out_lp[i] != -INFINITY) out_lp[i] -= log_z;
  // Insertion sort, most likely first, ties by lower id, empty slots (-1) last: k is small (<= a
  // few hundred) and this runs once per row.
  auto before = [](float va, int32_t a, float vb, int32_t b) {
    if (a < 0 || b < 0) return b < 0 && a >= 0;
    return va > vb || (va == vb && a < b);
  };
  for (int64_t i = 1; i < k; ++i) {
    const float v = out_lp[i];
    const int32_t id = out_ids[i];
    int64_t j = i;
    while (j > 0 && before(v, id, out_lp[j - 1], out_ids[j - 1])) {
      out_lp[j] = out_lp[j - 1];
      out_ids[j] = out_ids[j - 1];
      --j;
    }
    out_lp[j] = v;
    out_ids[j] = id;
  }
}

}  // namespace refinery::backend
