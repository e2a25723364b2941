// Prune plans (src/prune/plan.hpp) from hand-made importance reports: which structures are kept,
// the routing-group rule, and the user errors for targets a model cannot take.
#include <gtest/gtest.h>

#include "engine/model/model_config.hpp"
#include "prune/plan.hpp"
#include "prune_test_util.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::prune {
namespace {

model::ModelConfig config_of(const std::filesystem::path& dir) { return model::load_model_config(dir); }

// A report with the right shapes for `c`, every score 0 (tests set the ones they need).
ImportanceReport blank_report(const model::ModelConfig& c) {
  ImportanceReport r;
  r.embedding_channels.assign(static_cast<std::size_t>(c.hidden_size), 0.0);
  auto zeros = [](int n) {
    ChannelScores s;
    s.mean_abs.assign(static_cast<std::size_t>(n), 0.0);
    s.rms.assign(static_cast<std::size_t>(n), 0.0);
    return s;
  };
  for (int l = 0; l < c.num_layers; ++l) {
    LayerImportance li;
    li.layer = l;
    li.moe = c.layer_is_moe(l);
    if (!li.moe) {
      li.mlp_channels = zeros(c.intermediate_size);
    } else {
      ExpertScores e;
      const auto n = static_cast<std::size_t>(c.moe->num_experts);
      e.routed_tokens.assign(n, 0);
      e.frequency.assign(n, 0.0);
      e.gate_norm.assign(n, 0.0);
      e.channels.assign(n, zeros(c.moe->expert_intermediate_size));
      li.experts = e;
      if (c.moe->shared_intermediate_size > 0) li.shared_channels = zeros(c.moe->shared_intermediate_size);
    }
    r.layers.push_back(li);
  }
  return r;
}

template <typename F>
std::string error_of(F&& f) {
  return ::refinery::test::error_message_of(std::forward<F>(f));
}

TEST(PrunePlan, ExpertsByFrequencyAndGateNorm) {
  const auto c = config_of(test::fixture("mixtral_8e_top2"));
  ImportanceReport r = blank_report(c);
  r.layers[0].experts->frequency = {0.1, 0.5, 0.05, 0.3, 0.7, 0.2, 0.0, 0.15};
  r.layers[0].experts->gate_norm = {9, 1, 1, 1, 1, 1, 8, 7};
  r.layers[1].experts->frequency = {0, 0, 0, 0, 0, 0, 1, 1};  // ties: lower index first
  PruneOptions o;
  o.experts = 3;
  PrunePlan p = build_plan(c, &r, o);
  ASSERT_EQ(p.layers.size(), 2u);
  EXPECT_EQ(p.layers[0].experts, (std::vector<int>{1, 3, 4}));
  EXPECT_EQ(p.layers[1].experts, (std::vector<int>{0, 6, 7}));
  o.expert_metric = ExpertMetric::kGateNorm;
  p = build_plan(c, &r, o);
  EXPECT_EQ(p.layers[0].experts, (std::vector<int>{0, 6, 7}));
}

TEST(PrunePlan, RandomExpertsAreReproducibleAndNeedNoScores) {
  const auto c = config_of(test::fixture("qwen3_moe_normtopk"));
  PruneOptions o;
  o.experts = 4;
  o.expert_metric = ExpertMetric::kRandom;
  o.seed = 5;
  EXPECT_FALSE(o.needs_scores());
  const PrunePlan a = build_plan(c, nullptr, o), b = build_plan(c, nullptr, o);
  EXPECT_EQ(plan_to_json(a), plan_to_json(b));
  bool differs = false;
  for (uint64_t s = 0; s < 8 && !differs; ++s) {
    o.seed = s;
    differs = plan_to_json(build_plan(c, nullptr, o)) != plan_to_json(a);
  }
  EXPECT_TRUE(differs);
  for (const LayerPlan& l : a.layers)
    if (c.layer_is_moe(l.source)) EXPECT_EQ(l.experts.size(), 4u);
}

TEST(PrunePlan, GroupedRoutingKeepsEveryGroup) {
  const auto c = config_of(test::prune_fixtures() / "models" / "deepseek_v3_groups");  // 8 experts, 2 groups
  ImportanceReport r = blank_report(c);
  for (int l : {1, 2}) r.layers[static_cast<std::size_t>(l)].experts->frequency = {0.9, 0.8, 0.7, 0.6, 0.1, 0.3, 0.2, 0.05};
  PruneOptions o;
  o.experts = 4;
  const PrunePlan p = build_plan(c, &r, o);
  EXPECT_TRUE(p.layers[0].experts.empty());  // dense layer
  EXPECT_EQ(p.layers[1].experts, (std::vector<int>{0, 1, 5, 6}));  // not the global top 4 (0..3)
  o.experts = 3;  // not a multiple of n_group
  EXPECT_NE(error_of([&] { build_plan(c, &r, o); }).find("valid values: 4, 6, 8"), std::string::npos);
  o.experts = 2;  // 1 per group: noaux_tc scores groups by their top-2
  EXPECT_NE(error_of([&] { build_plan(c, &r, o); }).find("valid values: 4, 6, 8"), std::string::npos);
  // A hand-written plan that mixes groups is refused.
  PrunePlan bad = p;
  bad.layers[1].experts = {0, 1, 2, 5};
  EXPECT_NE(error_of([&] { validate_plan(c, bad); }).find("of each group"), std::string::npos);
}

TEST(PrunePlan, ExpertCountErrors) {
  const auto mixtral = config_of(test::fixture("mixtral_8e_top2"));
  PruneOptions o;
  o.experts = 9;
  EXPECT_NE(error_of([&] { check_options(mixtral, o); }).find("exceeds the 8 routed experts"), std::string::npos);
  o.experts = 1;  // below top-2
  EXPECT_NE(error_of([&] { check_options(mixtral, o); }).find("valid values: 2, 3, 4, 5, 6, 7, 8"),
            std::string::npos);
  o.experts = 4;
  EXPECT_NE(error_of([&] { check_options(config_of(test::fixture("llama_gqa_llama3")), o); }).find("dense"),
            std::string::npos);
  // 4 groups with topk_group 2 and top-3 leave only "all 8".
  EXPECT_NE(error_of([&] { check_options(config_of(test::fixture("deepseek_v3_noaux")), o); }).find("valid values: 8"),
            std::string::npos);
}

TEST(PrunePlan, LayersKeepTheHighestBlockScores) {
  const auto c = config_of(test::fixture("qwen3_moe_normtopk"));  // 4 layers
  ImportanceReport r = blank_report(c);
  const double scores[] = {0.5, 0.1, 0.9, 0.3};
  for (int l = 0; l < 4; ++l) r.layers[static_cast<std::size_t>(l)].block_score = scores[l];
  PruneOptions o;
  o.layers = 2;
  const PrunePlan p = build_plan(c, &r, o);
  ASSERT_EQ(p.layers.size(), 2u);
  EXPECT_EQ(p.layers[0].source, 0);
  EXPECT_EQ(p.layers[1].source, 2);
  for (int bad : {0, 5}) {
    o.layers = bad;
    EXPECT_NE(error_of([&] { check_options(c, o); }).find("keep between 1 and 4"), std::string::npos);
  }
}

TEST(PrunePlan, FfnRatioKeepsTheStrongestChannels) {
  const auto c = config_of(test::fixture("qwen2_moe_shared"));  // layer 1 dense (72), experts 24, shared 40
  ImportanceReport r = blank_report(c);
  for (int i = 0; i < 72; ++i) r.layers[1].mlp_channels.rms[static_cast<std::size_t>(i)] = (i * 37) % 72;
  PruneOptions o;
  o.ffn_ratio = 0.5;
  const PrunePlan p = build_plan(c, &r, o);
  ASSERT_EQ(p.layers[1].mlp_channels.size(), 36u);
  for (int ch : p.layers[1].mlp_channels) EXPECT_GE((ch * 37) % 72, 36) << ch;
  ASSERT_EQ(p.layers[0].expert_channels.size(), 6u);
  for (const auto& ch : p.layers[0].expert_channels) EXPECT_EQ(ch.size(), 12u);
  EXPECT_EQ(p.layers[0].shared_channels.size(), 20u);
  const PlanShape s = plan_shape(c, p);
  EXPECT_EQ(s.mlp_width, 36);
  EXPECT_EQ(s.expert_width, 12);
  EXPECT_EQ(s.shared_width, 20);
  // deepseek ties the shared width to moe_intermediate_size x n_shared_experts (2).
  const auto ds = config_of(test::fixture("deepseek_v2_lite"));
  const ImportanceReport ds_report = blank_report(ds);
  const PrunePlan q = build_plan(ds, &ds_report, o);
  EXPECT_EQ(plan_shape(ds, q).shared_width, 2 * plan_shape(ds, q).expert_width);
  for (double bad : {0.0, -0.5, 1.5}) {
    o.ffn_ratio = bad;
    EXPECT_NE(error_of([&] { check_options(c, o); }).find("outside (0, 1]"), std::string::npos);
  }
}

TEST(PrunePlan, ValidateRejectsInconsistentPlans) {
  const auto c = config_of(test::fixture("mixtral_8e_top2"));
  PrunePlan p = PrunePlan::identity(c);
  validate_plan(c, p);
  p.layers[0].experts = {3, 1, 5};
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("ascending"), std::string::npos);
  p.layers[0].experts = {1, 3, 5};
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("same"), std::string::npos);  // layer 1 keeps 8
  p.layers[1].experts = {0, 2, 8};
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("outside 0..7"), std::string::npos);
  p.layers[1].experts = {0, 2, 4};
  validate_plan(c, p);
  p.layers[0].mlp_channels = {1};
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("no dense MLP"), std::string::npos);
  p.layers[0].mlp_channels.clear();
  p.layers[0].expert_channels = {{0, 1}};
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("expert_channels has 1 lists for 3"), std::string::npos);
  PrunePlan none;
  EXPECT_THROW(validate_plan(c, none), Error);
}

TEST(PrunePlan, JsonRoundTrip) {
  PrunePlan p;
  p.layers.push_back({0, {1, 2}, {}, {3}, {{0, 1}, {2, 3}}});
  p.layers.push_back({2, {}, {5, 6}, {}, {}});
  const PrunePlan back = plan_from_json(plan_to_json(p), "t");
  EXPECT_EQ(plan_to_json(back), plan_to_json(p));
  EXPECT_EQ(back.layers[0].expert_channels[1], (std::vector<int>{2, 3}));
  EXPECT_THROW(plan_from_json(nlohmann::json{{"format", "refinery.prune_plan.v1"}}, "p.json"), Error);
  EXPECT_THROW(plan_from_json(nlohmann::json::object(), "p.json"), Error);
}

}  // namespace
}  // namespace refinery::prune
