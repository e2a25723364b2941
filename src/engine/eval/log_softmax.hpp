#pragma once
// Per-row log-softmax helpers, computed in double so that a 150k-entry vocabulary sums without
// losing the small probabilities (logits: f32 [vocab]).

#include <cstdint>

namespace refinery::eval {

struct RowStats {
  double log_sum_exp = 0;  // log sum_i exp(logits[i]) (the max is taken out first)
  int64_t argmax = 0;      // the first index of the largest logit
};

RowStats row_stats(const float* logits, int64_t vocab);

inline double log_prob(const float* logits, const RowStats& stats, int64_t token) {
  return static_cast<double>(logits[token]) - stats.log_sum_exp;
}

// The k most likely tokens of a row, most likely first (ties: lower id first), with their
// log-softmax over the whole row: indices [k], log_probs [k]. k <= vocab.
void top_k_log_probs(const float* logits, int64_t vocab, int64_t k, int32_t* indices,
                     float* log_probs);

// A priority sample of k ids of the row's softmax with their normalized estimates (backend/
// priority_sampling.hpp), most likely first: rank by logit + priority_noise(seed, row_key, id) (ties:
// lower id first), keep the k + 1 largest (k when k == vocab), then priority_estimates_row.
// indices [k], log_probs [k]. k <= vocab.
void priority_sample_log_probs(const float* logits, int64_t vocab, int64_t k, uint64_t seed,
                               int64_t row_key, int32_t* indices, float* log_probs);

}  // namespace refinery::eval
