#pragma once
// Knowledge-distillation losses, CPU reference (DESIGN §4). A CUDA twin must match these values.
//
// Notation, per position (row): s = student logits [vocab], t = teacher logits [vocab],
// T = temperature, q = softmax(s / T) (student), p = softmax(t / T) (teacher), z = s / T.
//
// Divergences D(p, q) (natural log):
//   kForwardKl : KL(p || q) = sum_i p_i (log p_i - log q_i)
//   kReverseKl : KL(q || p) = sum_i q_i (log q_i - log p_i)
//   kJsd       : beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q
//                (generalized Jensen-Shannon; beta = 0.5 is the symmetric JSD)
//   kSkewKl    : KL(p || m),  m = alpha p + (1 - alpha) q  (DistiLLM's skew KL)
//
// Loss of one call:
//   kd   = mean over counted positions of D(p, q)
//   ce   = mean over counted positions of -log softmax(s)[label]  (temperature 1, always)
//   loss = kd_weight * T^2 * kd + ce_weight * ce                   (T^2 as in Hinton et al.)
// A position whose label is -1 is not counted at all (no KD, no CE, zero gradient): -1 marks
// padding and positions with no target. With labels == nullptr every position counts.
//
// Gradients. For any D that is a function of q, with g_i = dD/dq_i and
// dq_i/dz_j = q_i (d_ij - q_j):
//   dD/dz_j = q_j (g_j - sum_i q_i g_i),   dD/ds_j = dD/dz_j / T.
//   kForwardKl : g_i = -p_i / q_i
//                -> dD/dz_j = q_j - p_j
//   kReverseKl : g_i = log q_i - log p_i + 1
//                -> dD/dz_j = q_j (log q_j - log p_j - KL(q || p))
//   kJsd       : g_i = (1 - beta) log(q_i / m_i)
//                (the p-term's derivative and the +1 of the q-term cancel exactly)
//                -> dD/dz_j = (1 - beta) q_j (log(q_j / m_j) - KL(q || m))
//   kSkewKl    : g_i = -(1 - alpha) p_i / m_i
//                -> dD/dz_j = -(1 - alpha) q_j (p_j / m_j - sum_i q_i p_i / m_i)
//   CE         : d(-log softmax(s)[y]) / ds_j = softmax(s)_j - [j == y]
// So d(loss)/ds_j = (kd_weight * T * dD/dz_j + ce_weight * (softmax(s)_j - [j == y])) / positions.
// Every KD gradient row sums to zero (softmax shift invariance); the tests check that.
//
// Sparse (top-k cache) variant: the teacher is known only by k ids and their log-probabilities
// lp_i at T = 1 over the full vocabulary. Outcomes are grouped into k + 1 buckets: each cached id
// alone, and one "tail" bucket holding every other id.
//   Teacher: P_i = exp(lp_i), P_tail = 1 - sum_i P_i, floored at kSparseTailFloor (fp16/fp32
//     rounding can make it <= 0 although a softmax's true tail is positive; reverse KL would be
//     infinite), then renormalized over the buckets (a no-op at T = 1 unless the floor applied).
//   Student: Q_i = q[id_i], Q_tail = sum of q over the uncached ids, computed directly by
//     log-sum-exp (not as 1 - sum Q_i, so a tiny tail keeps its precision).
//   D is the same divergence over the k + 1 buckets: exact for the bucketed distributions.
//   Gradient: dD/dz_j = q_j (g_b(j) - sum_b Q_b g_b), b(j) = the bucket of id j.
// When k == vocab there is no tail bucket and the sparse loss equals the dense one (up to the
// rounding of the cached log-probs).
// Temperature T != 1: the tempered teacher is the softmax over buckets of
// (lp_i / T, log P_tail / T), i.e. the tail is re-tempered AS IF it were a single outcome. This is
// an APPROXIMATION: the true tempered tail mass is sum_{j in tail} p_j^(1/T) / Z_T, which needs the
// unknown tail probabilities; for T > 1 the lumped tail gets less mass than the truth (x^(1/T) is
// subadditive). The relative odds of the cached ids are exact; at T = 1 the bucketed teacher is
// exact. The student side is exact at any T (its full logits are available).
//
// Tail prior (the alternative to the tail bucket, `refine distill --teacher-tail unigram|uniform`):
// the teacher's tail mass P_tail is spread over the uncached ids in proportion to a fixed prior u
// (the training data's unigram frequencies, or uniform), which makes the teacher dense again:
//   p_j = P_i for j = id_i,   p_j = P_tail · u_j / Σ_{j' uncached} u_j' otherwise,
// and the dense loss is used (expand_top_k_row below; Backend::expand_top_k). With the bucket the
// student's mass inside the tail is unconstrained (only its total is), so a student trained from
// scratch keeps whatever tail shape its initialization gives; the prior gives it a target.

#include <cstdint>

#include "engine/backend/kd_loss_options.hpp"

namespace refinery::distill {

// The options live at the backend layer (the CUDA twin takes them too).
using Divergence = backend::Divergence;
using LossOptions = backend::KdLossOptions;

struct LossResult {
  double loss = 0.0;      // kd_weight * T^2 * kd + ce_weight * ce
  double kd = 0.0;        // mean divergence over counted positions (without the T^2 factor)
  double ce = 0.0;        // mean hard-label cross-entropy over counted positions (0: no labels)
  int64_t positions = 0;  // positions counted (label != -1)
};

// Smallest teacher tail mass the sparse loss uses when k < vocab (see above).
inline constexpr double kSparseTailFloor = 1e-8;

// Stable names for messages and logs: "forward_kl", "reverse_kl", "jsd", "skew_kl".
const char* divergence_name(Divergence divergence);

// Throws a user error for temperature <= 0 or not finite, beta or alpha outside (0, 1), negative
// or non-finite weights, or both weights zero. Both beta and alpha are checked whatever the
// divergence.
void validate_options(const LossOptions& options);

// Dense teacher.
// student_logits, teacher_logits: [rows, vocab] fp32, row-major.
// labels: [rows] in [0, vocab) or -1 (ignored position); may be nullptr only if ce_weight == 0.
// grad: nullable; if given receives d(loss)/d(student_logits) [rows, vocab] (0 for rows not
// counted). Works one row at a time (O(vocab) scratch per thread, never [rows, vocab]);
// accumulates in double.
LossResult dense_loss(const float* student_logits, const float* teacher_logits,
                      const int32_t* labels, int64_t rows, int64_t vocab,
                      const LossOptions& options, float* grad);

// Sparse top-k teacher (offline cache of `refine logits`).
// teacher_ids: [rows, k] int32, distinct within a row, in [0, vocab).
// teacher_log_probs: [rows, k] fp32, log-softmax at T = 1 over the full vocabulary, finite.
// Other arguments as dense_loss. 1 <= k <= vocab.
LossResult sparse_loss(const float* student_logits, const int32_t* teacher_ids,
                       const float* teacher_log_probs, int64_t k, const int32_t* labels,
                       int64_t rows, int64_t vocab, const LossOptions& options, float* grad);

// One row of the tail-prior teacher, as log-probabilities: out[id_i] = lp_i and, for every other
// id j, out[j] = log P_tail + log_prior[j] − log Σ_{uncached} prior, P_tail = max(1 − Σ exp(lp_i),
// kSparseTailFloor); sums in double. log_prior [vocab]: a normalized log-distribution (finite).
// ids/lps [k] as sparse_loss's rows (unchecked here). out [vocab].
void expand_top_k_row(const int32_t* ids, const float* lps, int64_t k, const float* log_prior,
                      int64_t vocab, float* out);

}  // namespace refinery::distill
