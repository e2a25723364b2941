// Priority sampling of a softmax row (backend/priority_sampling.hpp, eval::priority_sample_log_probs):
// the noise is Exp(1), the sample is reproducible, a full-vocabulary sample is exact, and the
// estimates track the true probabilities over many row keys.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"
#include "engine/backend/priority_sampling.hpp"
#include "engine/eval/log_softmax.hpp"

namespace refinery::eval {
namespace {

std::vector<float> random_logits(int64_t vocab, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(static_cast<std::size_t>(vocab));
  for (auto& v : x) v = normal(rng);
  return x;
}

std::vector<double> softmax(const std::vector<float>& x) {
  const double lse = row_stats(x.data(), static_cast<int64_t>(x.size())).log_sum_exp;
  std::vector<double> p;
  for (const float v : x) p.push_back(std::exp(v - lse));
  return p;
}

TEST(PriorityNoise, IsAnExponentialDrawThatDependsOnSeedRowAndId) {
  double sum = 0.0, sum_sq = 0.0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double e = backend::priority_noise(3, i / 100, i % 100);
    ASSERT_GT(e, 0.0);
    ASSERT_LT(e, 17.5);
    sum += e;
    sum_sq += e * e;
  }
  const double mean = sum / n, var = sum_sq / n - mean * mean;
  EXPECT_NEAR(mean, 1.0, 0.01);  // Exp(1): mean 1, variance 1; 5 sigma of the mean is 0.011
  EXPECT_NEAR(var, 1.0, 0.03);
  EXPECT_EQ(backend::priority_noise(3, 5, 9), backend::priority_noise(3, 5, 9));
  EXPECT_NE(backend::priority_noise(3, 5, 9), backend::priority_noise(4, 5, 9));
  EXPECT_NE(backend::priority_noise(3, 5, 9), backend::priority_noise(3, 6, 9));
  EXPECT_NE(backend::priority_noise(3, 5, 9), backend::priority_noise(3, 5, 10));
}

TEST(PrioritySample, RowsAreSortedDistinctNormalizedAndReproducible) {
  const int64_t vocab = 301, k = 17;
  const auto x = random_logits(vocab, 2.0f, 1);
  std::vector<int32_t> ids(k), ids2(k);
  std::vector<float> lp(k), lp2(k);
  priority_sample_log_probs(x.data(), vocab, k, 11, 42, ids.data(), lp.data());
  priority_sample_log_probs(x.data(), vocab, k, 11, 42, ids2.data(), lp2.data());
  EXPECT_EQ(ids, ids2);
  EXPECT_EQ(lp, lp2);
  EXPECT_EQ(std::set<int32_t>(ids.begin(), ids.end()).size(), static_cast<std::size_t>(k));
  double total = 0.0;
  for (int64_t i = 0; i < k; ++i) {
    ASSERT_GE(ids[i], 0);
    ASSERT_LT(ids[i], vocab);
    if (i > 0) EXPECT_GE(lp[i - 1], lp[i]);
    total += std::exp(static_cast<double>(lp[i]));
  }
  EXPECT_NEAR(total, 1.0, 1e-5);
  priority_sample_log_probs(x.data(), vocab, k, 11, 43, ids2.data(), lp2.data());
  EXPECT_NE(ids, ids2);  // another row key draws another sample
}

TEST(PrioritySample, TheWholeVocabularyIsTheExactDistribution) {
  const int64_t vocab = 40;
  const auto x = random_logits(vocab, 3.0f, 2);
  std::vector<int32_t> ids(vocab), want_ids(vocab);
  std::vector<float> lp(vocab), want_lp(vocab);
  priority_sample_log_probs(x.data(), vocab, vocab, 5, 0, ids.data(), lp.data());
  top_k_log_probs(x.data(), vocab, vocab, want_ids.data(), want_lp.data());
  EXPECT_EQ(ids, want_ids);
  for (int64_t i = 0; i < vocab; ++i) EXPECT_NEAR(lp[i], want_lp[i], 2e-5) << i;
}

// Over independent draws (row keys) the estimates track the true probabilities: the ids that
// are always kept carry their exact probability, the tail's total is exact in every row, and ids
// near the threshold are estimated with a small bias of the ratio estimate (a few percent; plain
// priority sampling would be unbiased but lets the tail's sampling noise rescale the head).
TEST(PrioritySample, EstimatesTrackTheTrueProbabilities) {
  const int64_t vocab = 200, k = 12;
  const auto x = random_logits(vocab, 2.5f, 3);
  const auto p = softmax(x);
  std::vector<double> mean(static_cast<std::size_t>(vocab), 0.0);
  const int draws = 40000;
  std::vector<int32_t> ids(k);
  std::vector<float> lp(k);
  for (int d = 0; d < draws; ++d) {
    priority_sample_log_probs(x.data(), vocab, k, 9, d, ids.data(), lp.data());
    for (int64_t i = 0; i < k; ++i) mean[static_cast<std::size_t>(ids[i])] += std::exp(lp[i]);
  }
  double tail_true = 0.0, tail_mean = 0.0;
  std::vector<int32_t> order(static_cast<std::size_t>(vocab));
  for (int32_t i = 0; i < vocab; ++i) order[static_cast<std::size_t>(i)] = i;
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  for (int64_t j = 0; j < vocab; ++j) {
    const auto i = static_cast<std::size_t>(order[static_cast<std::size_t>(j)]);
    mean[i] /= draws;
    if (j < 2) EXPECT_NEAR(mean[i], p[i], 0.01 * p[i]) << "head id " << i;  // (nearly) always exact
    if (j < 8) EXPECT_NEAR(mean[i], p[i], 0.1 * p[i]) << "id " << i << " of rank " << j;
    if (j >= k) {
      tail_true += p[i];
      tail_mean += mean[i];
    }
  }
  // The ids outside the top k carry their share: a top-k cache would give them 0.
  ASSERT_GT(tail_true, 0.05);
  EXPECT_NEAR(tail_mean, tail_true, 0.1 * tail_true);
}

TEST(PrioritySample, CpuBackendUsesOneRowKeyPerRow) {
  const int64_t vocab = 97, hidden = 8, rows = 70, k = 9;  // 70 rows: two chunks of the CPU op
  auto be = backend::make_cpu_backend(1);
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor h = Tensor::empty(DType::kF32, {rows, hidden});
  Tensor w = Tensor::empty(DType::kF32, {vocab, hidden});
  for (int64_t i = 0; i < h.numel(); ++i) h.mutable_data<float>()[i] = normal(rng);
  for (int64_t i = 0; i < w.numel(); ++i) w.mutable_data<float>()[i] = normal(rng);
  backend::LinearWeight head;
  head.storage = backend::DenseWeight{w};
  Tensor ids = Tensor::empty(DType::kI32, {rows, k}), lp = Tensor::empty(DType::kF32, {rows, k});
  backend::TopKSampling sampling{true, 21, 1000};
  be->log_softmax_top_k(h, head, k, sampling, ids, lp);
  Tensor logits = Tensor::empty(DType::kF32, {rows, vocab});
  be->linear(h, head, logits);
  std::vector<int32_t> want_ids(k);
  std::vector<float> want_lp(k);
  for (int64_t r = 0; r < rows; ++r) {
    priority_sample_log_probs(logits.data<float>() + r * vocab, vocab, k, 21, 1000 + r,
                              want_ids.data(), want_lp.data());
    for (int64_t i = 0; i < k; ++i) {
      EXPECT_EQ(ids.data<int32_t>()[r * k + i], want_ids[i]) << r;
      EXPECT_FLOAT_EQ(lp.data<float>()[r * k + i], want_lp[i]) << r;
    }
  }
}

}  // namespace
}  // namespace refinery::eval
