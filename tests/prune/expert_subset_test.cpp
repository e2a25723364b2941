// The exact expert-subset choice (src/prune/expert_subset.hpp): a brute force over a hand-built
// layer with an independent router written here; on fixture models the exact choice is no worse
// than the frequency choice or any random subset, and its error is what the pruned model (written
// by apply_plan, run by the engine) actually gives; group-limited routing keeps valid subsets.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "engine/model/transformer.hpp"
#include "prune/apply.hpp"
#include "prune/expert_subset.hpp"
#include "prune/importance.hpp"
#include "prune/plan.hpp"
#include "prune_test_util.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::prune {
namespace {

namespace fs = std::filesystem;
using ::refinery::test::error_message_of;

// A hand-built layer: E experts, top-k softmax routing with renormalization and scaling.
MoeLayerSample hand_sample(int e, int k, int64_t t, int64_t h, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  MoeLayerSample s;
  s.layer = 3;
  s.router.num_experts = e;
  s.router.top_k = k;
  s.router.norm_topk_prob = true;
  s.router.routed_scaling_factor = 1.5;
  s.tokens = t;
  s.hidden = h;
  for (int64_t i = 0; i < t * e; ++i) s.logits.push_back(nd(rng));
  for (int64_t i = 0; i < e * t * h; ++i) s.expert_outputs.push_back(nd(rng));
  return s;
}

// The restricted routed output of `s` computed independently of the engine's router:
// softmax over the subset, top-k (ties to the lower index), renormalized, scaled.
double brute_error(const MoeLayerSample& s, const std::vector<int>& subset) {
  const auto output = [&](const std::vector<int>& keep) {
    std::vector<double> y(static_cast<std::size_t>(s.tokens * s.hidden), 0.0);
    for (int64_t t = 0; t < s.tokens; ++t) {
      std::vector<double> p;
      double mx = -1e30, sum = 0.0;
      for (int e : keep) mx = std::max(mx, static_cast<double>(s.logits[static_cast<std::size_t>(t * s.router.num_experts + e)]));
      for (int e : keep) {
        p.push_back(std::exp(s.logits[static_cast<std::size_t>(t * s.router.num_experts + e)] - mx));
        sum += p.back();
      }
      for (double& v : p) v /= sum;
      std::vector<int> idx(keep.size());
      std::iota(idx.begin(), idx.end(), 0);
      std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
      double top = 0.0;
      for (int j = 0; j < s.router.top_k; ++j) top += p[idx[j]];
      for (int j = 0; j < s.router.top_k; ++j) {
        const int e = keep[static_cast<std::size_t>(idx[j])];
        const double w = p[idx[j]] / top * s.router.routed_scaling_factor;
        for (int64_t c = 0; c < s.hidden; ++c)
          y[static_cast<std::size_t>(t * s.hidden + c)] +=
              w * s.expert_outputs[static_cast<std::size_t>((e * s.tokens + t) * s.hidden + c)];
      }
    }
    return y;
  };
  std::vector<int> all(static_cast<std::size_t>(s.router.num_experts));
  std::iota(all.begin(), all.end(), 0);
  const auto a = output(subset), b = output(all);
  double err = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) err += (a[i] - b[i]) * (a[i] - b[i]);
  return err / static_cast<double>(a.size());
}

TEST(PruneExpertSubset, BruteForceOnAHandBuiltLayer) {
  const MoeLayerSample s = hand_sample(6, 2, 11, 5, 17);
  const std::vector<std::vector<int>> subsets = valid_expert_subsets(s.router, 3, 5000);
  ASSERT_EQ(subsets.size(), 20u);  // C(6, 3)
  double best = 1e30;
  std::vector<int> best_subset;
  for (const auto& sub : subsets) {
    const double want = brute_error(s, sub);
    EXPECT_NEAR(subset_error(s, sub), want, 1e-5 * (1.0 + want)) << sub[0] << sub[1] << sub[2];
    if (want < best) {
      best = want;
      best_subset = sub;
    }
  }
  const LayerSubsetChoice c = best_expert_subset(s, 3, 5000);
  EXPECT_EQ(c.layer, 3);
  EXPECT_EQ(c.experts, best_subset);
  EXPECT_NEAR(c.error, best, 1e-5 * (1.0 + best));
  EXPECT_EQ(c.subsets, 20);
  EXPECT_EQ(c.tokens, 11);
  EXPECT_GT(c.full_mean_square, 0.0);
  // Keeping every expert reproduces the layer exactly.
  EXPECT_EQ(best_expert_subset(s, 6, 5000).error, 0.0);
}

TEST(PruneExpertSubset, GroupLimitedRoutingKeepsTheSameCountPerGroup) {
  backend::RouterSpec r;
  r.num_experts = 8;
  r.top_k = 2;
  r.grouping = backend::RouterGrouping::kGroupTop2;
  r.n_group = 2;
  r.topk_group = 1;
  const auto subsets = valid_expert_subsets(r, 4, 5000);
  EXPECT_EQ(subsets.size(), 36u);  // C(4, 2)^2
  for (const auto& s : subsets) {
    ASSERT_EQ(s.size(), 4u);
    EXPECT_LT(s[1], 4);
    EXPECT_GE(s[2], 4);
    EXPECT_TRUE(std::is_sorted(s.begin(), s.end()));
  }
  // 3 is not a multiple of the 2 groups; 2 leaves 1 per group, fewer than top_k in topk_group 1.
  EXPECT_NE(error_message_of([&] { valid_expert_subsets(r, 3, 5000); }).find("multiple of 2"), std::string::npos);
  error_message_of([&] { valid_expert_subsets(r, 2, 5000); });
  r.grouping = backend::RouterGrouping::kNone;  // groups do not matter without group-limited routing
  EXPECT_EQ(valid_expert_subsets(r, 3, 5000).size(), 56u);
}

TEST(PruneExpertSubset, TooManySubsetsSuggestsAMetric) {
  backend::RouterSpec r;
  r.num_experts = 64;
  r.top_k = 6;
  const std::string msg = error_message_of([&] { valid_expert_subsets(r, 32, 5000); });
  EXPECT_NE(msg.find("frequency"), std::string::npos) << msg;
  EXPECT_NE(msg.find("5000"), std::string::npos) << msg;
  EXPECT_EQ(valid_expert_subsets(r, 63, 5000).size(), 64u);
  error_message_of([&] { valid_expert_subsets(r, 5, 5000); });  // below top_k
}

// The experts the frequency metric keeps (plan.hpp's rule: the N most routed, ties to the lower).
std::vector<int> by_frequency(const ExpertScores& s, int n) {
  std::vector<int> idx(s.frequency.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return s.frequency[a] > s.frequency[b]; });
  idx.resize(static_cast<std::size_t>(n));
  std::sort(idx.begin(), idx.end());
  return idx;
}

// The engine's MoE block output on rows `x` [T, hidden] of `layer`.
std::vector<float> mlp_rows(model::Transformer& m, int layer, const std::vector<float>& x) {
  const int64_t h = m.config().hidden_size, t = static_cast<int64_t>(x.size()) / h;
  const Tensor y = m.mlp_block(layer, Tensor::copy_of(DType::kF32, {t, h}, x.data()));
  return std::vector<float>(y.data<float>(), y.data<float>() + y.numel());
}

struct FixtureCase {
  std::string model;
  int experts;
  bool grouped;
};

class ExactFixtureTest : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(ExactFixtureTest, NoWorseThanFrequencyOrRandomAndMatchesThePrunedModel) {
  const FixtureCase& fc = GetParam();
  const fs::path parent = fc.model == "deepseek_v3_groups" ? test::prune_fixtures() / "models" / fc.model
                                                           : test::fixture(fc.model);
  auto model = model::Transformer::load(parent, backend::make_cpu_backend(1));
  const auto& c = model->config();
  const auto tokens = test::random_tokens(96, c.vocab_size, 5);
  CalibrationOptions calib;
  calib.seq_len = 32;
  ExpertSubsetOptions opt;
  opt.experts = fc.experts;
  opt.max_tokens = 64;
  opt.calibration = calib;
  const std::vector<LayerSubsetChoice> choices = choose_expert_subsets(*model, tokens, opt);
  ASSERT_EQ(static_cast<int>(choices.size()), c.num_moe_layers());

  const std::vector<MoeLayerSample> samples = collect_moe_samples(*model, tokens, calib, 64);
  ASSERT_EQ(samples.size(), choices.size());
  const ImportanceReport report = compute_importance(*model, std::span(tokens).first(64), calib);
  std::mt19937 rng(9);
  for (std::size_t i = 0; i < choices.size(); ++i) {
    const LayerSubsetChoice& ch = choices[i];
    const MoeLayerSample& s = samples[i];
    EXPECT_EQ(ch.layer, s.layer);
    EXPECT_EQ(ch.tokens, 64);
    ASSERT_EQ(static_cast<int>(ch.experts.size()), fc.experts);
    EXPECT_TRUE(std::is_sorted(ch.experts.begin(), ch.experts.end()));
    EXPECT_DOUBLE_EQ(subset_error(s, ch.experts), ch.error);
    EXPECT_GT(ch.error, 0.0);
    if (fc.grouped) {
      const int per = c.moe->num_experts / c.moe->n_group;
      for (int g = 0; g < c.moe->n_group; ++g)
        EXPECT_EQ(std::count_if(ch.experts.begin(), ch.experts.end(), [&](int e) { return e / per == g; }),
                  fc.experts / c.moe->n_group);
    }
    const auto& scores = *report.layers[static_cast<std::size_t>(ch.layer)].experts;
    const std::vector<int> freq = by_frequency(scores, fc.experts);
    if (!fc.grouped) {
      EXPECT_LE(ch.error, subset_error(s, freq));
    }
    const auto all = valid_expert_subsets(s.router, fc.experts, 5000);
    for (int r = 0; r < 10; ++r) {
      const auto& other = all[std::uniform_int_distribution<std::size_t>(0, all.size() - 1)(rng)];
      EXPECT_LE(ch.error, subset_error(s, other));
    }
  }

  // The pruned model's MoE block on the sampled rows differs from the parent's by exactly the
  // reported error (the shared experts are in both and cancel).
  PrunePlan plan = PrunePlan::identity(c);
  set_plan_experts(plan, choices);
  ::refinery::test::ScratchDir scratch;
  apply_plan(parent, plan, scratch.path() / "pruned");
  auto pruned = model::Transformer::load(scratch.path() / "pruned", backend::make_cpu_backend(1));
  for (std::size_t i = 0; i < choices.size(); ++i) {
    const auto a = mlp_rows(*model, samples[i].layer, samples[i].inputs);
    const auto b = mlp_rows(*pruned, samples[i].layer, samples[i].inputs);
    double err = 0.0;
    for (std::size_t j = 0; j < a.size(); ++j) err += (static_cast<double>(a[j]) - b[j]) * (a[j] - b[j]);
    err /= static_cast<double>(a.size());
    EXPECT_NEAR(err, choices[i].error, 1e-4 * choices[i].error + 1e-9) << "layer " << samples[i].layer;
  }
}

INSTANTIATE_TEST_SUITE_P(PruneExpertSubset, ExactFixtureTest,
                         ::testing::Values(FixtureCase{"mixtral_8e_top2", 4, false},
                                           FixtureCase{"qwen2_moe_shared", 3, false},
                                           FixtureCase{"qwen3_moe_normtopk", 5, false},
                                           FixtureCase{"deepseek_v3_groups", 4, true}),
                         [](const auto& info) { return info.param.model; });

TEST(PruneExpertSubset, ChecksTargetsBeforeCalibration) {
  auto model = model::Transformer::load(test::fixture("mixtral_8e_top2"), backend::make_cpu_backend(1));
  ExpertSubsetOptions opt;
  opt.experts = 4;
  opt.max_subsets = 10;  // C(8, 4) = 70
  const std::vector<int32_t> none;  // an empty stream: the count check must come first
  EXPECT_NE(error_message_of([&] { choose_expert_subsets(*model, none, opt); }).find("gate_norm"), std::string::npos);
  opt.experts = 9;
  error_message_of([&] { choose_expert_subsets(*model, none, opt); });
  auto dense = model::Transformer::load(test::fixture("llama_gqa_llama3"), backend::make_cpu_backend(1));
  opt.experts = 2;
  error_message_of([&] { choose_expert_subsets(*dense, none, opt); });
}

TEST(PruneExpertSubset, PlanExpertsNarrowChannelLists) {
  PrunePlan plan;
  LayerPlan lp;
  lp.source = 1;
  lp.expert_channels = {{0}, {1}, {2}, {3}};
  plan.layers = {lp};
  LayerSubsetChoice c;
  c.layer = 1;
  c.experts = {1, 3};
  LayerSubsetChoice dropped;
  dropped.layer = 0;  // not in the plan: skipped
  dropped.experts = {0, 1};
  set_plan_experts(plan, {dropped, c});
  EXPECT_EQ(plan.layers[0].experts, (std::vector<int>{1, 3}));
  EXPECT_EQ(plan.layers[0].expert_channels, (std::vector<std::vector<int>>{{1}, {3}}));
}

}  // namespace
}  // namespace refinery::prune
