#include "engine/eval/kl_divergence.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/eval/log_softmax.hpp"

namespace refinery::eval {
namespace {

constexpr double kTailFloor = 1e-9;

PositionComparison compare_full(const float* x, int64_t vocab, const RowStats& q,
                                const float* r, int32_t target) {
  const RowStats p = row_stats(r, vocab);
  PositionComparison out;
  double kl = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double lp = log_prob(r, p, i);
    const double pi = std::exp(lp);
    if (pi > 0) kl += pi * (lp - log_prob(x, q, i));
  }
  out.kl = kl;
  out.nll = -log_prob(x, q, target);
  out.nll_ref = -log_prob(r, p, target);
  out.same_top = q.argmax == p.argmax;
  return out;
}

PositionComparison compare_top_k(const float* x, int64_t vocab, const RowStats& q,
                                 const ReferenceRow& ref, int32_t target) {
  PositionComparison out;
  thread_local std::vector<uint8_t> in_top;
  in_top.assign(static_cast<size_t>(vocab), 0);
  double kl = 0;
  double p_top = 0;
  bool found = false;
  for (int64_t j = 0; j < ref.k; ++j) {
    const int32_t i = ref.indices[j];
    in_top[static_cast<size_t>(i)] = 1;
    const double lp = ref.log_probs[j];
    const double pi = std::exp(lp);
    p_top += pi;
    kl += pi * (lp - log_prob(x, q, i));
    if (i == target) {
      out.nll_ref = -lp;
      found = true;
    }
  }
  const double tail = std::max(0.0, 1.0 - p_top);
  if (tail > 0 && ref.k < vocab) {
    // log Q = log sum_{i not in S} exp(x_i - lse_q)
    double max_out = -INFINITY;
    for (int64_t i = 0; i < vocab; ++i)
      if (!in_top[static_cast<size_t>(i)]) max_out = std::max(max_out, static_cast<double>(x[i]));
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i)
      if (!in_top[static_cast<size_t>(i)]) sum += std::exp(static_cast<double>(x[i]) - max_out);
    const double log_q_tail = max_out + std::log(sum) - q.log_sum_exp;
    kl += tail * (std::log(tail) - log_q_tail);
  }
  if (!found) {
    out.ref_tail = true;
    const double spread = std::max(tail, kTailFloor) / static_cast<double>(std::max<int64_t>(1, vocab - ref.k));
    out.nll_ref = -std::log(spread);
  }
  out.kl = kl;
  out.nll = -log_prob(x, q, target);
  out.same_top = ref.k > 0 && q.argmax == ref.indices[0];
  return out;
}

}  // namespace

PositionComparison compare_position(const float* model_logits, int64_t vocab,
                                    const ReferenceRow& reference, int32_t target) {
  const RowStats q = row_stats(model_logits, vocab);
  PositionComparison out = reference.logits != nullptr
                               ? compare_full(model_logits, vocab, q, reference.logits, target)
                               : compare_top_k(model_logits, vocab, q, reference, target);
  out.dp = std::exp(-out.nll) - std::exp(-out.nll_ref);
  return out;
}

}  // namespace refinery::eval
