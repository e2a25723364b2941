#include "engine/eval/statistics.hpp"

#include <algorithm>
#include <cmath>

namespace refinery::eval {

MeanAndUncertainty mean_and_uncertainty(double sum, double sum2, int64_t count) {
  if (count < 1) return {};
  const double n = static_cast<double>(count);
  const double f = sum / n;
  const double var = sum2 / n - f * f;
  return {f, var > 0 && count > 10 ? std::sqrt(var / (n - 1)) : 0.0};
}

double covariance_of_means(double sum_a, double sum_b, double sum_ab, int64_t count) {
  if (count < 10) return 0.0;
  const double n = static_cast<double>(count);
  return (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1);
}

double percentile(const std::vector<float>& sorted, double fraction) {
  if (fraction <= 0) return sorted.front();
  if (fraction >= 1) return sorted.back();
  const double p = fraction * static_cast<double>(sorted.size() - 1);
  const size_t i = static_cast<size_t>(p);
  const double t = p - static_cast<double>(i);
  const size_t j = std::min(i + 1, sorted.size() - 1);
  return (1 - t) * static_cast<double>(sorted[i]) + t * static_cast<double>(sorted[j]);
}

double NllSums::perplexity() const { return std::exp(mean()); }

double NllSums::perplexity_uncertainty() const {
  return perplexity() * mean_and_uncertainty(sum, sum2, count).uncertainty;
}

}  // namespace refinery::eval
