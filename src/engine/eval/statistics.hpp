#pragma once
// The summary statistics llama.cpp's `perplexity --kl-divergence` prints
// (tools/perplexity/perplexity.cpp), with the same definitions, so that users can compare:
//  - a mean with its uncertainty: f = sum/n, var = sum2/n - f^2, and ± sqrt(var / (n - 1)),
//    reported as 0 when var <= 0 or n <= 10;
//  - a covariance of two means: (sum_ab/n - (sum_a/n)(sum_b/n)) / (n - 1), 0 when n < 10;
//  - percentiles of sorted values by linear interpolation at fraction * (n - 1) (numpy's
//    default "linear" method; the median is the mean of the two middle values for even n).

#include <cstdint>
#include <utility>
#include <vector>

namespace refinery::eval {

struct MeanAndUncertainty {
  double mean = 0;
  double uncertainty = 0;
};

MeanAndUncertainty mean_and_uncertainty(double sum, double sum2, int64_t count);
double covariance_of_means(double sum_a, double sum_b, double sum_ab, int64_t count);
// `sorted` ascending and non-empty; fraction in [0, 1].
double percentile(const std::vector<float>& sorted, double fraction);

// Sums of a per-token negative log-likelihood, for a perplexity with its uncertainty.
struct NllSums {
  double sum = 0;
  double sum2 = 0;
  int64_t count = 0;
  void add(double nll) {
    sum += nll;
    sum2 += nll * nll;
    ++count;
  }
  double mean() const { return count > 0 ? sum / static_cast<double>(count) : 0.0; }
  // exp(mean NLL); its uncertainty is perplexity * uncertainty(mean NLL).
  double perplexity() const;
  double perplexity_uncertainty() const;
};

}  // namespace refinery::eval
