#include "engine/eval/log_softmax.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

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

}  // namespace refinery::eval
