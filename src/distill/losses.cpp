// KD losses, CPU reference. Formulas and gradients are documented in losses.hpp.
//
// Design: one row (position) at a time, in double, with O(vocab) scratch per thread — never a
// [rows, vocab] temporary. Rows run in parallel with OpenMP; per-row results land in a [rows] array
// that is summed in row order afterwards, so the result does not depend on the thread count. All
// input validation happens before the parallel region (no exception may leave an OpenMP region).
//
// Both variants reduce to a divergence over "buckets" b with teacher/student log-masses lP_b, lQ_b:
// the dense loss has one bucket per vocabulary id, the sparse loss k cached ids plus one tail
// bucket. Per bucket we compute the divergence term d_b and h_b = Q_b * g_b (g_b = dD/dQ_b, up to
// an additive constant that cancels), which stays bounded where g_b alone would not (forward KL's
// -P/Q). Then
//   D = sum_b d_b,  S = sum_b h_b,  dD/dz_j = (q_j / Q_b(j)) h_b(j) - q_j S.

#include "distill/losses.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/core/error.hpp"

namespace refinery::distill {
namespace {

// Mixing weights as logs, precomputed once per call.
struct Mix {
  Divergence divergence;
  double w_p = 0.0;  // beta (JSD) or alpha (skew): weight of the teacher in m
  double log_w_p = 0.0;
  double log_w_q = 0.0;  // log(1 - w_p)
};

Mix make_mix(const LossOptions& options) {
  Mix mix{options.divergence};
  if (options.divergence == Divergence::kJsd) mix.w_p = options.beta;
  if (options.divergence == Divergence::kSkewKl) mix.w_p = options.alpha;
  if (mix.w_p > 0.0) {
    mix.log_w_p = std::log(mix.w_p);
    mix.log_w_q = std::log1p(-mix.w_p);
  }
  return mix;
}

double log_add_exp(double a, double b) {
  const double hi = std::max(a, b);
  if (hi == -std::numeric_limits<double>::infinity()) return hi;
  return hi + std::log1p(std::exp(std::min(a, b) - hi));
}

// x * (a - b) with the convention 0 * (anything) = 0 (so 0 * log 0 terms vanish).
double weighted(double x, double diff) { return x > 0.0 ? x * diff : 0.0; }

struct BucketTerm {
  double d;  // contribution to the divergence
  double h;  // Q_b * dD/dQ_b (additive constants in dD/dQ dropped: they cancel in the gradient)
};

BucketTerm bucket_term(const Mix& mix, double lp, double lq) {
  const double p = std::exp(lp);
  const double q = std::exp(lq);
  switch (mix.divergence) {
    case Divergence::kForwardKl:
      // d = p (log p - log q); g = -p/q -> h = -p.
      return {weighted(p, lp - lq), -p};
    case Divergence::kReverseKl: {
      // d = q (log q - log p); g = log q - log p (+1 dropped) -> h = d.
      const double d = weighted(q, lq - lp);
      return {d, d};
    }
    case Divergence::kJsd: {
      // m = beta p + (1-beta) q; d = beta p log(p/m) + (1-beta) q log(q/m); g = (1-beta) log(q/m).
      const double lm = log_add_exp(mix.log_w_p + lp, mix.log_w_q + lq);
      const double q_term = weighted(q, lq - lm);
      return {mix.w_p * weighted(p, lp - lm) + (1.0 - mix.w_p) * q_term, (1.0 - mix.w_p) * q_term};
    }
    case Divergence::kSkewKl: {
      // m = alpha p + (1-alpha) q; d = p log(p/m); g = -(1-alpha) p/m -> h = -(1-alpha) p q/m.
      const double lm = log_add_exp(mix.log_w_p + lp, mix.log_w_q + lq);
      return {weighted(p, lp - lm), -(1.0 - mix.w_p) * weighted(p, std::exp(lq - lm))};
    }
  }
  return {0.0, 0.0};
}

// out[j] = in[j] * scale - log sum_j exp(in[j] * scale): a log-softmax in double. Returns nothing;
// `out` has n entries.
void log_softmax_row(const float* in, int64_t n, double scale, double* out) {
  double hi = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    out[j] = static_cast<double>(in[j]) * scale;
    hi = std::max(hi, out[j]);
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(out[j] - hi);
  const double lse = hi + std::log(sum);
  for (int64_t j = 0; j < n; ++j) out[j] -= lse;
}

// log sum_j exp(s_j) at temperature 1, for the hard-label cross-entropy.
double log_sum_exp_row(const float* s, int64_t n) {
  double hi = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) hi = std::max(hi, static_cast<double>(s[j]));
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) sum += std::exp(static_cast<double>(s[j]) - hi);
  return hi + std::log(sum);
}

// Threads for a call: no more than rows, since each thread holds O(vocab) scratch.
int thread_count(int64_t rows) {
  return static_cast<int>(
      std::clamp<int64_t>(std::min<int64_t>(omp_get_max_threads(), rows), 1, 1 << 16));
}

// Checks shapes, pointers and labels; returns the number of counted positions.
int64_t check_common(const float* student_logits, const int32_t* labels, int64_t rows,
                     int64_t vocab, const LossOptions& options, const char* what) {
  validate_options(options);
  REFINERY_CHECK(rows >= 0 && vocab >= 1, what, ": rows=", rows, " vocab=", vocab);
  REFINERY_CHECK(rows == 0 || student_logits != nullptr, what, ": student logits are null");
  if (labels == nullptr) {
    if (options.ce_weight > 0.0)
      throw_user_error(
          what, ": ce_weight is ", options.ce_weight,
          " but no labels were given; pass the target token ids or set ce_weight to 0");
    return rows;
  }
  int64_t positions = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t y = labels[r];
    if (y < -1 || y >= vocab)
      throw_user_error(
          what, ": label of row ", r, " is ", y, ", expected a token id in [0, ", vocab,
          ") or -1 to ignore the position; check that the data's tokenizer matches the "
          "model's vocabulary");
    if (y != -1) ++positions;
  }
  return positions;
}

// Sums per-row values in row order (deterministic whatever the thread count) into a LossResult.
LossResult finish(const std::vector<double>& kd_rows, const std::vector<double>& ce_rows,
                  int64_t positions, const LossOptions& options) {
  LossResult result;
  result.positions = positions;
  if (positions == 0) return result;
  double kd = 0.0, ce = 0.0;
  for (double v : kd_rows) kd += v;
  for (double v : ce_rows) ce += v;
  result.kd = kd / static_cast<double>(positions);
  result.ce = ce / static_cast<double>(positions);
  const double t = options.temperature;
  result.loss = options.kd_weight * t * t * result.kd + options.ce_weight * result.ce;
  return result;
}

// A position labelled -1 is ignored whole (KD term too): its gradient row is zero.
bool ignored_row(const int32_t* labels, int64_t r, float* grad_row, int64_t vocab) {
  if (labels == nullptr || labels[r] != -1) return false;
  if (grad_row != nullptr) std::fill(grad_row, grad_row + vocab, 0.0f);
  return true;
}

}  // namespace

const char* divergence_name(Divergence divergence) {
  switch (divergence) {
    case Divergence::kForwardKl:
      return "forward_kl";
    case Divergence::kReverseKl:
      return "reverse_kl";
    case Divergence::kJsd:
      return "jsd";
    case Divergence::kSkewKl:
      return "skew_kl";
  }
  return "unknown";
}

void validate_options(const LossOptions& o) { backend::validate_kd_loss_options(o); }

LossResult dense_loss(const float* student_logits, const float* teacher_logits,
                      const int32_t* labels, int64_t rows, int64_t vocab,
                      const LossOptions& options, float* grad) {
  const int64_t positions =
      check_common(student_logits, labels, rows, vocab, options, "dense_loss");
  REFINERY_CHECK(rows == 0 || teacher_logits != nullptr, "dense_loss: teacher logits are null");
  const Mix mix = make_mix(options);
  const double t = options.temperature;
  const double inv_t = 1.0 / t;
  const double scale = positions > 0 ? 1.0 / static_cast<double>(positions) : 0.0;
  std::vector<double> kd_rows(rows, 0.0), ce_rows(rows, 0.0);

  const int threads = thread_count(rows);
  // Per-thread scratch: log q and (log p, then h) for one row.
  std::vector<std::vector<double>> lq_buf(threads, std::vector<double>(vocab));
  std::vector<std::vector<double>> lp_buf(threads, std::vector<double>(vocab));

#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = student_logits + r * vocab;
    float* g = grad != nullptr ? grad + r * vocab : nullptr;
    const int32_t y = labels != nullptr ? labels[r] : 0;
    if (ignored_row(labels, r, g, vocab)) continue;
    const int tid = omp_get_thread_num();
    double* lq = lq_buf[tid].data();
    double* lp = lp_buf[tid].data();
    log_softmax_row(s, vocab, inv_t, lq);
    log_softmax_row(teacher_logits + r * vocab, vocab, inv_t, lp);
    double d_sum = 0.0, h_sum = 0.0;
    for (int64_t j = 0; j < vocab; ++j) {
      const BucketTerm term = bucket_term(mix, lp[j], lq[j]);
      d_sum += term.d;
      h_sum += term.h;
      lp[j] = term.h;  // lp is not needed any more: keep h_j for the gradient
    }
    kd_rows[r] = d_sum;
    const double lse1 = labels != nullptr ? log_sum_exp_row(s, vocab) : 0.0;
    if (labels != nullptr) ce_rows[r] = lse1 - static_cast<double>(s[y]);
    if (g == nullptr) continue;
    // d(loss)/ds_j = scale * (kd_weight * T * dD/dz_j + ce_weight * (softmax(s)_j - [j == y]))
    const double kd_coef = options.kd_weight * t;
    const double ce_coef = labels != nullptr ? options.ce_weight : 0.0;
    for (int64_t j = 0; j < vocab; ++j) {
      const double dz = lp[j] - std::exp(lq[j]) * h_sum;
      double v = kd_coef * dz;
      if (ce_coef != 0.0)
        v += ce_coef * (std::exp(static_cast<double>(s[j]) - lse1) - (j == y ? 1.0 : 0.0));
      g[j] = static_cast<float>(scale * v);
    }
  }
  return finish(kd_rows, ce_rows, positions, options);
}

LossResult sparse_loss(const float* student_logits, const int32_t* teacher_ids,
                       const float* teacher_log_probs, int64_t k, const int32_t* labels,
                       int64_t rows, int64_t vocab, const LossOptions& options, float* grad) {
  const int64_t positions =
      check_common(student_logits, labels, rows, vocab, options, "sparse_loss");
  if (k < 1 || k > vocab)
    throw_user_error("sparse_loss: the teacher cache has top-k = ", k,
                     ", expected 1 <= k <= vocab (", vocab,
                     "); the cache was made for another vocabulary or is damaged");
  REFINERY_CHECK(rows == 0 || (teacher_ids != nullptr && teacher_log_probs != nullptr),
                 "sparse_loss: teacher ids or log-probs are null");
  {
    // Cache content: ids in range and distinct within a row, log-probs finite.
    std::vector<uint8_t> seen(vocab, 0);
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t* ids = teacher_ids + r * k;
      const float* lps = teacher_log_probs + r * k;
      for (int64_t i = 0; i < k; ++i) {
        if (ids[i] < 0 || ids[i] >= vocab)
          throw_user_error("sparse_loss: teacher id ", i, " of row ", r, " is ", ids[i],
                           ", expected a token id in [0, ", vocab,
                           "); the logit cache does not match the student's vocabulary");
        if (seen[ids[i]])
          throw_user_error(
              "sparse_loss: teacher id ", ids[i], " appears twice in row ", r,
              " of the top-k cache; the cache is damaged, regenerate it with refine logits");
        seen[ids[i]] = 1;
        if (!std::isfinite(lps[i]))
          throw_user_error("sparse_loss: teacher log-prob ", i, " of row ", r, " is ", lps[i],
                           ", expected a finite log-probability; the cache is damaged");
      }
      for (int64_t i = 0; i < k; ++i) seen[ids[i]] = 0;
    }
  }
  const Mix mix = make_mix(options);
  const double t = options.temperature;
  const double inv_t = 1.0 / t;
  const double scale = positions > 0 ? 1.0 / static_cast<double>(positions) : 0.0;
  const bool has_tail = k < vocab;
  std::vector<double> kd_rows(rows, 0.0), ce_rows(rows, 0.0);

  const int threads = thread_count(rows);
  std::vector<std::vector<double>> lq_buf(threads, std::vector<double>(vocab));
  // bucket_of[j]: index of id j among the row's cached ids, or -1 for the tail.
  std::vector<std::vector<int32_t>> bucket_buf_of(threads, std::vector<int32_t>(vocab, -1));
  std::vector<std::vector<double>> bucket_buf(threads, std::vector<double>(2 * (k + 1)));

#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = student_logits + r * vocab;
    float* g = grad != nullptr ? grad + r * vocab : nullptr;
    const int32_t y = labels != nullptr ? labels[r] : 0;
    if (ignored_row(labels, r, g, vocab)) continue;
    const int tid = omp_get_thread_num();
    double* lq = lq_buf[tid].data();
    int32_t* bucket_of = bucket_buf_of[tid].data();
    double* lp_b = bucket_buf[tid].data();  // [k + 1] teacher bucket log-masses, then h_b
    double* lq_b = lp_b + (k + 1);          // [k + 1] student bucket log-masses
    const int32_t* ids = teacher_ids + r * k;
    const float* lps = teacher_log_probs + r * k;
    const int64_t buckets = has_tail ? k + 1 : k;

    // Student buckets (exact at any T): Q_i = q[id_i]; log Q_tail by log-sum-exp over uncached ids.
    log_softmax_row(s, vocab, inv_t, lq);
    for (int64_t i = 0; i < k; ++i) {
      bucket_of[ids[i]] = static_cast<int32_t>(i);
      lq_b[i] = lq[ids[i]];
    }
    if (has_tail) {
      double hi = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < vocab; ++j)
        if (bucket_of[j] < 0) hi = std::max(hi, lq[j]);
      double sum = 0.0;
      for (int64_t j = 0; j < vocab; ++j)
        if (bucket_of[j] < 0) sum += std::exp(lq[j] - hi);
      // hi == -inf: every uncached logit is -inf (masked), the tail is empty, not NaN.
      lq_b[k] = hi == -std::numeric_limits<double>::infinity() ? hi : hi + std::log(sum);
    }

    // Teacher buckets: tail = max(1 - sum exp(lp_i), floor); re-temper lp/T (tail as one outcome);
    // renormalize over the buckets.
    double known = 0.0;
    for (int64_t i = 0; i < k; ++i) known += std::exp(static_cast<double>(lps[i]));
    double hi = -std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < k; ++i) {
      lp_b[i] = static_cast<double>(lps[i]) * inv_t;
      hi = std::max(hi, lp_b[i]);
    }
    if (has_tail) {
      lp_b[k] = std::log(std::max(1.0 - known, kSparseTailFloor)) * inv_t;
      hi = std::max(hi, lp_b[k]);
    }
    double z = 0.0;
    for (int64_t b = 0; b < buckets; ++b) z += std::exp(lp_b[b] - hi);
    const double lz = hi + std::log(z);
    for (int64_t b = 0; b < buckets; ++b) lp_b[b] -= lz;

    double d_sum = 0.0, h_sum = 0.0;
    for (int64_t b = 0; b < buckets; ++b) {
      const BucketTerm term = bucket_term(mix, lp_b[b], lq_b[b]);
      d_sum += term.d;
      h_sum += term.h;
      lp_b[b] = term.h;  // keep h_b for the gradient
    }
    kd_rows[r] = d_sum;
    const double lse1 = labels != nullptr ? log_sum_exp_row(s, vocab) : 0.0;
    if (labels != nullptr) ce_rows[r] = lse1 - static_cast<double>(s[y]);

    if (g != nullptr) {
      // dD/dz_j = (q_j / Q_b(j)) h_b(j) - q_j S; q_j / Q_b = 1 for a cached id, exp(lq_j - lQ_tail)
      // for a tail id.
      const double kd_coef = options.kd_weight * t;
      const double ce_coef = labels != nullptr ? options.ce_weight : 0.0;
      const double h_tail = has_tail ? lp_b[k] : 0.0;
      const double lq_tail = has_tail ? lq_b[k] : 0.0;
      for (int64_t j = 0; j < vocab; ++j) {
        const double qj = std::exp(lq[j]);
        const int32_t b = bucket_of[j];
        // q_j == 0 (a -inf logit) gets no share, also when the whole tail is -inf (no 0/0).
        const double own = b >= 0 ? lp_b[b] : (qj > 0.0 ? std::exp(lq[j] - lq_tail) * h_tail : 0.0);
        double v = kd_coef * (own - qj * h_sum);
        if (ce_coef != 0.0)
          v += ce_coef * (std::exp(static_cast<double>(s[j]) - lse1) - (j == y ? 1.0 : 0.0));
        g[j] = static_cast<float>(scale * v);
      }
    }
    for (int64_t i = 0; i < k; ++i) bucket_of[ids[i]] = -1;
  }
  return finish(kd_rows, ce_rows, positions, options);
}

void expand_top_k_row(const int32_t* ids, const float* lps, int64_t k, const float* log_prior,
                      int64_t vocab, float* out) {
  double known = 0.0, prior_cached = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    known += std::exp(static_cast<double>(lps[i]));
    prior_cached += std::exp(static_cast<double>(log_prior[ids[i]]));
  }
  if (k < vocab) {
    // The prior's uncached mass, floored like the teacher's: a prior that puts (nearly) all of
    // its mass on the cached ids must not make the tail infinite.
    const double tail = std::max(1.0 - known, kSparseTailFloor);
    const double prior_tail = std::max(1.0 - prior_cached, kSparseTailFloor);
    const double base = std::log(tail) - std::log(prior_tail);
    for (int64_t j = 0; j < vocab; ++j)
      out[j] = static_cast<float>(base + static_cast<double>(log_prior[j]));
  }
  for (int64_t i = 0; i < k; ++i) out[ids[i]] = lps[i];
}

}  // namespace refinery::distill
