#include "engine/eval/log_softmax.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "engine/backend/priority_sampling.hpp"

namespace refinery::eval {

RowStats row_stats(const float* logits, int64_t vocab) {
  RowStats stats;
  float max = logits[0];
  for (int64_t i = 1; i < vocab; ++i) {
    if (logits[i] > max) {
      max = logits[i];
      stats.argmax = i;
    }
  }
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - max);
  stats.log_sum_exp = static_cast<double>(max) + std::log(sum);
  return stats;
}

void top_k_log_probs(const float* logits, int64_t vocab, int64_t k, int32_t* indices,
                     float* log_probs) {
  const RowStats stats = row_stats(logits, vocab);
  thread_local std::vector<int32_t> order;
  order.resize(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto more_likely = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), more_likely);
  for (int64_t j = 0; j < k; ++j) {
    indices[j] = order[static_cast<size_t>(j)];
    log_probs[j] = static_cast<float>(log_prob(logits, stats, indices[j]));
  }
}

void priority_sample_log_probs(const float* logits, int64_t vocab, int64_t k, uint64_t seed,
                               int64_t row_key, int32_t* indices, float* log_probs) {
  const double lse = row_stats(logits, vocab).log_sum_exp;
  thread_local std::vector<float> key;
  thread_local std::vector<int32_t> order;
  key.resize(static_cast<size_t>(vocab));
  order.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i)
    key[i] = logits[i] + backend::priority_noise(seed, row_key, static_cast<int32_t>(i));
  std::iota(order.begin(), order.end(), 0);
  const int64_t n = std::min(k + 1, vocab);
  const float* keys = key.data();
  std::partial_sort(order.begin(), order.begin() + n, order.end(), [keys](int32_t a, int32_t b) {
    return keys[a] > keys[b] || (keys[a] == keys[b] && a < b);
  });
  thread_local std::vector<float> key_lp;
  key_lp.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) key_lp[j] = static_cast<float>(keys[order[j]] - lse);
  backend::priority_estimates_row(order.data(), key_lp.data(), k, n > k, seed, row_key, indices,
                                  log_probs);
}

}  // namespace refinery::eval
