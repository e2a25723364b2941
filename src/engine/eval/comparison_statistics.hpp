#pragma once
// Accumulates PositionComparisons into the statistics of llama.cpp's
// `perplexity --kl-divergence` (definitions in statistics.hpp): both perplexities, the
// log-ratio and ratio of perplexities with uncertainties that account for their covariance, the
// mean KL with its uncertainty and percentiles, RMS of Δp, and the top-1 agreement
// ("Same top p", ± sqrt(p(1-p)/(n-1))). Holds one float per scored token for the percentiles.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/eval/kl_divergence.hpp"
#include "engine/eval/statistics.hpp"

namespace refinery::eval {

// The percentiles reported, as (JSON key, fraction); "max" and "min" are the extremes and "50"
// the median.
const std::vector<std::pair<std::string, double>>& kl_percentile_levels();

struct ComparisonResult {
  int64_t tokens = 0;
  double perplexity = 0, perplexity_uncertainty = 0;
  double ref_perplexity = 0, ref_perplexity_uncertainty = 0;
  double ln_ppl_ratio = 0, ln_ppl_ratio_uncertainty = 0;  // mean(nll) - mean(nll_ref)
  double ppl_ratio = 0, ppl_ratio_uncertainty = 0;        // perplexity / ref_perplexity
  double kl_mean = 0, kl_mean_uncertainty = 0;
  std::vector<std::pair<std::string, double>> kl_percentiles;  // kl_percentile_levels() order
  double top1_agreement = 0, top1_agreement_uncertainty = 0;
  double mean_dp = 0, mean_dp_uncertainty = 0;
  double rms_dp = 0, rms_dp_uncertainty = 0;
  double max_abs_dp = 0;
  int64_t ref_tail_tokens = 0;  // top-k reference: targets outside the cached k
};

class ComparisonAccumulator {
 public:
  void add(const PositionComparison& c);
  int64_t count() const { return nll_.count; }
  // Sorts the held KL values; call once at the end.
  ComparisonResult finish();

 private:
  NllSums nll_, nll_ref_;
  double sum_nll_nll_ref_ = 0;
  double sum_kl_ = 0, sum_kl2_ = 0;
  double sum_dp_ = 0, sum_dp2_ = 0, sum_dp4_ = 0, max_abs_dp_ = 0;
  int64_t same_top_ = 0;
  int64_t ref_tail_ = 0;
  std::vector<float> kl_values_;
};

}  // namespace refinery::eval
