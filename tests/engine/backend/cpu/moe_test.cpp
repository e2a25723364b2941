// Router variants and the MoE combine vs naive references.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend_test_util.hpp"

namespace refinery::backend {
namespace {

struct Routing {
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

Routing run_route(Backend& be, const std::vector<float>& logits, int64_t t, const RouterSpec& spec,
                  const std::vector<float>& bias = {}) {
  Tensor e = test::poisoned({t, spec.top_k}, DType::kI32), w = test::poisoned({t, spec.top_k});
  const Tensor b =
      bias.empty() ? Tensor() : Tensor::copy_of(DType::kF32, {int64_t(bias.size())}, bias.data());
  be.route(Tensor::copy_of(DType::kF32, {t, spec.num_experts}, logits.data()), b, spec, e, w);
  Routing r{std::vector<int32_t>(e.data<int32_t>(), e.data<int32_t>() + e.numel()),
            std::vector<float>(w.data<float>(), w.data<float>() + w.numel())};
  return r;
}

// Sorted (expert, weight) pairs of token 0.
std::vector<std::pair<int32_t, float>> sorted(const Routing& r) {
  std::vector<std::pair<int32_t, float>> v;
  for (std::size_t i = 0; i < r.experts.size(); ++i) v.emplace_back(r.experts[i], r.weights[i]);
  std::sort(v.begin(), v.end());
  return v;
}

TEST(CpuRouter, SoftmaxTopKWithAndWithoutRenormalization) {
  auto be = make_cpu_backend();
  const std::vector<float> l = {0.1f, 2.0f, -1.0f, 1.5f, 0.3f};
  double z = 0;
  for (float v : l) z += std::exp(v);
  RouterSpec s{5, 2, RouterScoring::kSoftmax};
  auto r = sorted(run_route(*be, l, 1, s));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].first, 1);
  EXPECT_EQ(r[1].first, 3);
  EXPECT_NEAR(r[0].second, std::exp(2.0) / z, 1e-6);
  s.norm_topk_prob = true;
  s.routed_scaling_factor = 1.5;
  r = sorted(run_route(*be, l, 1, s));
  EXPECT_NEAR(r[0].second, 1.5 * std::exp(2.0) / (std::exp(2.0) + std::exp(1.5)), 1e-6);
}

TEST(CpuRouter, DeepseekV2GroupMaxMasksWholeGroups) {
  auto be = make_cpu_backend();
  // 6 experts in 3 groups of 2; group maxima 3.0 (g0), 2.9 (g1), 1.0 (g2). topk_group 1 keeps g0
  // only, so the top-2 is {0, 1} although expert 2 beats expert 1 overall.
  const std::vector<float> l = {3.0f, -2.0f, 2.9f, 2.8f, 1.0f, 0.0f};
  RouterSpec s{6, 2, RouterScoring::kSoftmax, RouterGrouping::kGroupMax, 3, 1, false, 1.7};
  const auto r = sorted(run_route(*be, l, 1, s));
  double z = 0;
  for (float v : l) z += std::exp(v);
  EXPECT_EQ(r[0].first, 0);
  EXPECT_EQ(r[1].first, 1);
  EXPECT_NEAR(r[1].second, 1.7 * std::exp(-2.0) / z, 1e-6);  // softmax over ALL experts, no renorm
  s.grouping = RouterGrouping::kNone;
  const auto free = sorted(run_route(*be, l, 1, s));
  EXPECT_EQ(free[1].first, 2);
}

TEST(CpuRouter, DeepseekV3BiasSelectsButDoesNotWeigh) {
  auto be = make_cpu_backend();
  // 8 experts, 4 groups of 2. Group score = sum of top-2 (sigmoid + bias).
  const std::vector<float> l = {2.0f, 1.9f, 0.0f, 0.1f, 1.0f, -3.0f, -1.0f, -1.2f};
  std::vector<float> bias(8, 0.0f);
  bias[6] = 1.0f;  // lifts expert 6 and group 3 ({6, 7})
  bias[7] = 0.9f;
  RouterSpec s{8, 3, RouterScoring::kSigmoid, RouterGrouping::kGroupTop2, 4, 2, true, 2.5};
  const auto r = sorted(run_route(*be, l, 1, s, bias));
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  // Group scores: g0 = σ2+σ1.9 ≈ 1.75, g1 ≈ 1.02, g2 ≈ 0.78, g3 = σ(-1)+1 + σ(-1.2)+0.9 ≈ 2.37 ->
  // keep g3, g0. Choice values: e0 .88, e1 .87, e6 1.27, e7 1.13 -> top-3 = {6, 7, 0}.
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].first, 0);
  EXPECT_EQ(r[1].first, 6);
  EXPECT_EQ(r[2].first, 7);
  const double sum = sig(2.0) + sig(-1.0) + sig(-1.2);
  EXPECT_NEAR(r[1].second, 2.5 * sig(-1.0) / sum, 1e-6);  // weights from the UNBIASED scores
  EXPECT_NEAR(r[0].second + r[1].second + r[2].second, 2.5, 1e-5);
}

TEST(CpuMoe, CombineMatchesNaivePerTokenLoop) {
  auto be = make_cpu_backend();
  const int64_t t = 9, hidden = 13, inter = 7, e_count = 5, k = 2;
  std::vector<ExpertWeights> experts;
  std::vector<std::vector<float>> gw, uw, dw;
  for (int e = 0; e < e_count; ++e) {
    const Tensor g = test::convert(test::random_f32({inter, hidden}, 10 + e), DType::kBF16);
    const Tensor u = test::random_f32({inter, hidden}, 20 + e);
    const Tensor d = test::random_f32({hidden, inter}, 30 + e);
    experts.push_back({LinearWeight{DenseWeight{g}, {}, "g"}, LinearWeight{DenseWeight{u}, {}, "u"},
                       LinearWeight{DenseWeight{d}, {}, "d"}});
    gw.push_back(test::values(g));
    uw.push_back(test::values(u));
    dw.push_back(test::values(d));
  }
  const Tensor x = test::random_f32({t, hidden}, 1);
  // Expert 4 gets no token; expert 1 gets most.
  std::vector<int32_t> ids = {1, 0, 1, 2, 3, 1, 0, 1, 1, 3, 2, 1, 0, 3, 1, 2, 1, 0};
  const Tensor sel = Tensor::copy_of(DType::kI32, {t, k}, ids.data());
  const Tensor wts = test::random_f32({t, k}, 2);
  Tensor y = test::poisoned({t, hidden});
  be->moe_experts(x, sel, wts, experts, y);
  std::vector<float> ref(static_cast<std::size_t>(t * hidden), 0.0f);
  for (int64_t ti = 0; ti < t; ++ti)
    for (int64_t j = 0; j < k; ++j) {
      const int e = ids[ti * k + j];
      std::vector<double> a(inter);
      for (int64_t i = 0; i < inter; ++i) {
        double g = 0, u = 0;
        for (int64_t c = 0; c < hidden; ++c) {
          g += double(gw[e][i * hidden + c]) * x.data<float>()[ti * hidden + c];
          u += double(uw[e][i * hidden + c]) * x.data<float>()[ti * hidden + c];
        }
        a[i] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t c = 0; c < hidden; ++c) {
        double o = 0;
        for (int64_t i = 0; i < inter; ++i) o += dw[e][c * inter + i] * a[i];
        ref[ti * hidden + c] += float(wts.data<float>()[ti * k + j] * o);
      }
    }
  EXPECT_LT(test::max_abs_diff(test::values(y), ref), 1e-4);

  // accumulate: onto a y that already holds something (the shared experts' output) = that + the
  // routed sum. Not bitwise: y + e1 + e2 vs (0 + e1 + e2) + y in f32.
  const Tensor base = test::random_f32({t, hidden}, 3);
  Tensor acc = base.clone();
  be->moe_experts(x, sel, wts, experts, acc, /*accumulate=*/true);
  std::vector<float> want = test::values(y);
  for (std::size_t i = 0; i < want.size(); ++i) want[i] += base.data<float>()[i];
  EXPECT_LT(test::max_abs_diff(test::values(acc), want), 1e-5 * test::max_abs(want));
}

}  // namespace
}  // namespace refinery::backend
