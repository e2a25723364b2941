#include "engine/eval/comparison_statistics.hpp"

#include <algorithm>
#include <cmath>

namespace refinery::eval {

const std::vector<std::pair<std::string, double>>& kl_percentile_levels() {
  static const std::vector<std::pair<std::string, double>> levels = {
      {"max", 1.0}, {"99.9", 0.999}, {"99", 0.99}, {"95", 0.95}, {"90", 0.90},
      {"50", 0.5},  {"10", 0.10},    {"5", 0.05},  {"1", 0.01},  {"min", 0.0}};
  return levels;
}

void ComparisonAccumulator::add(const PositionComparison& c) {
  nll_.add(c.nll);
  nll_ref_.add(c.nll_ref);
  sum_nll_nll_ref_ += c.nll * c.nll_ref;
  sum_kl_ += c.kl;
  sum_kl2_ += c.kl * c.kl;
  sum_dp_ += c.dp;
  const double dp2 = c.dp * c.dp;
  sum_dp2_ += dp2;
  sum_dp4_ += dp2 * dp2;
  max_abs_dp_ = std::max(max_abs_dp_, std::fabs(c.dp));
  if (c.same_top) ++same_top_;
  if (c.ref_tail) ++ref_tail_;
  kl_values_.push_back(static_cast<float>(c.kl));
}

ComparisonResult ComparisonAccumulator::finish() {
  ComparisonResult r;
  const int64_t n = nll_.count;
  r.tokens = n;
  if (n == 0) return r;
  r.perplexity = nll_.perplexity();
  r.perplexity_uncertainty = nll_.perplexity_uncertainty();
  r.ref_perplexity = nll_ref_.perplexity();
  r.ref_perplexity_uncertainty = nll_ref_.perplexity_uncertainty();

  const auto log_ppl = mean_and_uncertainty(nll_.sum, nll_.sum2, n);
  const auto log_ppl_ref = mean_and_uncertainty(nll_ref_.sum, nll_ref_.sum2, n);
  const double cov = covariance_of_means(nll_.sum, nll_ref_.sum, sum_nll_nll_ref_, n);
  r.ln_ppl_ratio = log_ppl.mean - log_ppl_ref.mean;
  r.ln_ppl_ratio_uncertainty =
      std::sqrt(std::max(0.0, log_ppl.uncertainty * log_ppl.uncertainty +
                                  log_ppl_ref.uncertainty * log_ppl_ref.uncertainty - 2.0 * cov));
  r.ppl_ratio = std::exp(r.ln_ppl_ratio);
  r.ppl_ratio_uncertainty = r.ppl_ratio * r.ln_ppl_ratio_uncertainty;

  const auto kl = mean_and_uncertainty(sum_kl_, sum_kl2_, n);
  r.kl_mean = kl.mean;
  r.kl_mean_uncertainty = kl.uncertainty;
  std::sort(kl_values_.begin(), kl_values_.end());
  for (const auto& [key, fraction] : kl_percentile_levels())
    r.kl_percentiles.emplace_back(key, percentile(kl_values_, fraction));

  const double top = static_cast<double>(same_top_) / static_cast<double>(n);
  r.top1_agreement = top;
  r.top1_agreement_uncertainty =
      n > 1 ? std::sqrt(top * (1 - top) / static_cast<double>(n - 1)) : 0.0;

  const auto dp = mean_and_uncertainty(sum_dp_, sum_dp2_, n);
  r.mean_dp = dp.mean;
  r.mean_dp_uncertainty = dp.uncertainty;
  const auto mse = mean_and_uncertainty(sum_dp2_, sum_dp4_, n);
  r.rms_dp = std::sqrt(mse.mean);
  r.rms_dp_uncertainty = r.rms_dp > 0 ? 0.5 / r.rms_dp * mse.uncertainty : 0.0;
  r.max_abs_dp = max_abs_dp_;
  r.ref_tail_tokens = ref_tail_;
  return r;
}

}  // namespace refinery::eval
