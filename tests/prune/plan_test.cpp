// Prune plans (src/prune/plan.hpp) from hand-made importance reports: which structures are kept
// (experts, layers, channels, heads per KV group, KV groups, hidden channels), the routing-group
// and KV-group rules, the config keys they change, and the user errors for targets a model cannot take.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "engine/model/model_config.hpp"
#include "prune/plan.hpp"
#include "prune/pruned_config.hpp"
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
    li.head_norm.assign(static_cast<std::size_t>(c.attention.num_heads), 0.0);
    li.kv_group_norm.assign(static_cast<std::size_t>(c.attention.num_kv_heads), 0.0);
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
  p.layers.push_back({0, {1, 2}, {}, {3}, {{0, 1}, {2, 3}}, {0, 2}, {1}});
  p.layers.push_back({2, {}, {5, 6}, {}, {}, {}, {}});
  p.hidden_channels = {0, 4, 7};
  const PrunePlan back = plan_from_json(plan_to_json(p), "t");
  EXPECT_EQ(plan_to_json(back), plan_to_json(p));
  EXPECT_EQ(back.layers[0].expert_channels[1], (std::vector<int>{2, 3}));
  EXPECT_EQ(back.layers[0].heads, (std::vector<int>{0, 2}));
  EXPECT_EQ(back.layers[0].kv_heads, (std::vector<int>{1}));
  EXPECT_TRUE(back.layers[1].heads.empty());
  EXPECT_EQ(back.hidden_channels, (std::vector<int>{0, 4, 7}));
  EXPECT_FALSE(plan_to_json(PrunePlan{{LayerPlan{}}, {}}).contains("hidden_channels"));
  EXPECT_THROW(plan_from_json(nlohmann::json{{"format", "refinery.prune_plan.v1"}}, "p.json"), Error);
  EXPECT_THROW(plan_from_json(nlohmann::json::object(), "p.json"), Error);
}

// ---- heads, KV groups and hidden channels ----

// llama_gqa_llama3: 4 query heads in 2 KV groups (heads 0,1 -> group 0; 2,3 -> group 1).
TEST(PrunePlanWidth, GqaHeadsKeepTheBestOfEveryGroup) {
  const auto c = config_of(test::fixture("llama_gqa_llama3"));
  ImportanceReport r = blank_report(c);
  r.layers[0].head_norm = {0.1, 0.9, 0.5, 0.4};  // global top 2 would be {1, 2}; per group too
  r.layers[1].head_norm = {0.9, 0.8, 0.1, 0.2};  // global top 2 is {0, 1} (one group); per group {0, 3}
  PruneOptions o;
  o.heads = 2;
  EXPECT_TRUE(o.needs_scores());
  const PrunePlan p = build_plan(c, &r, o);
  EXPECT_EQ(p.layers[0].heads, (std::vector<int>{1, 2}));
  EXPECT_EQ(p.layers[1].heads, (std::vector<int>{0, 3}));
  EXPECT_TRUE(p.layers[0].kv_heads.empty());
  const PlanShape s = plan_shape(c, p);
  EXPECT_EQ(s.heads, 2);
  EXPECT_EQ(s.kv_heads, 2);
  EXPECT_EQ(s.hidden, -1);
  o.heads = 4;  // everything: the plan keeps all heads
  EXPECT_TRUE(build_plan(c, &r, o).layers[0].heads.empty());
  o.heads = 3;
  const std::string msg = error_of([&] { check_options(c, o); });
  EXPECT_NE(msg.find("valid values: 2, 4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--kv-heads"), std::string::npos) << msg;
  for (int bad : {0, 5}) {
    o.heads = bad;
    EXPECT_NE(error_of([&] { check_options(c, o); }).find("keep between 1 and 4"), std::string::npos);
  }
}

// mixtral_8e_top2: 6 query heads in 2 KV groups of 3.
TEST(PrunePlanWidth, KvHeadsTakeTheirQueryHeadsAlong) {
  const auto c = config_of(test::fixture("mixtral_8e_top2"));
  ImportanceReport r = blank_report(c);
  r.layers[0].kv_group_norm = {1.0, 2.0};
  r.layers[1].kv_group_norm = {3.0, 2.0};
  r.layers[0].head_norm = {9, 9, 9, 0.3, 0.1, 0.2};
  r.layers[1].head_norm = {0.5, 0.7, 0.6, 9, 9, 9};
  PruneOptions o;
  o.kv_heads = 1;
  PrunePlan p = build_plan(c, &r, o);
  EXPECT_EQ(p.layers[0].kv_heads, (std::vector<int>{1}));
  EXPECT_EQ(kept_heads(c, p.layers[0]), (std::vector<int>{3, 4, 5}));
  EXPECT_EQ(p.layers[1].kv_heads, (std::vector<int>{0}));
  EXPECT_EQ(kept_heads(c, p.layers[1]), (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(plan_shape(c, p).heads, 3);
  EXPECT_EQ(plan_shape(c, p).kv_heads, 1);
  // With --heads 2: N / K = 2 heads of each kept group, its own best.
  o.heads = 2;
  p = build_plan(c, &r, o);
  EXPECT_EQ(p.layers[0].heads, (std::vector<int>{3, 5}));
  EXPECT_EQ(p.layers[1].heads, (std::vector<int>{1, 2}));
  EXPECT_EQ(plan_shape(c, p).heads, 2);
  o.heads = 4;  // 4 heads from 1 group of 3
  std::string msg = error_of([&] { check_options(c, o); });
  EXPECT_NE(msg.find("valid values with --kv-heads 1: 1, 2, 3"), std::string::npos) << msg;
  o.heads.reset();
  o.kv_heads = 3;
  msg = error_of([&] { check_options(c, o); });
  EXPECT_NE(msg.find("keep between 1 and 2"), std::string::npos) << msg;
}

// MHA (kv heads == heads): a query head keeps its own KV head, so any count is valid.
TEST(PrunePlanWidth, MhaKeepsEachHeadWithItsKvHead) {
  nlohmann::json j;
  {
    std::ifstream in(test::fixture("llama_gqa_llama3") / "config.json");
    j = nlohmann::json::parse(in);
  }
  j["num_key_value_heads"] = j["num_attention_heads"];
  const auto c = model::parse_model_config(j, "mha");
  ImportanceReport r = blank_report(c);
  for (auto& l : r.layers) {
    l.head_norm = {0.4, 0.1, 0.3, 0.2};
    l.kv_group_norm = l.head_norm;  // one head per group
  }
  PruneOptions o;
  o.heads = 2;  // not a multiple of the 4 KV heads: fine, they go with their query heads
  const PrunePlan p = build_plan(c, &r, o);
  EXPECT_EQ(p.layers[0].kv_heads, (std::vector<int>{0, 2}));
  EXPECT_EQ(kept_heads(c, p.layers[0]), (std::vector<int>{0, 2}));
  EXPECT_EQ(plan_shape(c, p).kv_heads, 2);
  const nlohmann::json pruned = pruned_config(j, c, p);
  EXPECT_EQ(pruned["num_attention_heads"], 2);
  EXPECT_EQ(pruned["num_key_value_heads"], 2);
  // transformers' LlamaConfig wants hidden_size (64) a multiple of num_attention_heads.
  o.heads = 3;
  const std::string msg = error_of([&] { check_options(c, o); });
  EXPECT_NE(msg.find("multiple of num_attention_heads"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--hidden 63"), std::string::npos) << msg;
  o.hidden = 63;
  check_options(c, o);
  PrunePlan three = PrunePlan::identity(c);
  for (LayerPlan& l : three.layers) l.kv_heads = {0, 1, 2};
  EXPECT_NE(error_of([&] { validate_plan(c, three); }).find("multiple of num_attention_heads"), std::string::npos);
}

// deepseek_v2_lite: MLA, 4 heads; K/V heads follow the query heads, there are no KV groups.
TEST(PrunePlanWidth, MlaHeadsAndNoKvGroups) {
  const auto c = config_of(test::fixture("deepseek_v2_lite"));
  ImportanceReport r = blank_report(c);
  for (auto& l : r.layers) l.head_norm = {0.2, 0.5, 0.1, 0.3};
  PruneOptions o;
  o.heads = 2;
  const PrunePlan p = build_plan(c, &r, o);
  for (const LayerPlan& l : p.layers) {
    EXPECT_EQ(l.heads, (std::vector<int>{1, 3}));
    EXPECT_TRUE(l.kv_heads.empty());
  }
  EXPECT_EQ(plan_shape(c, p).kv_heads, 2);
  nlohmann::json parent;
  {
    std::ifstream in(test::fixture("deepseek_v2_lite") / "config.json");
    parent = nlohmann::json::parse(in);
  }
  const nlohmann::json pruned = pruned_config(parent, c, p);
  EXPECT_EQ(pruned["num_attention_heads"], 2);
  EXPECT_EQ(pruned["num_key_value_heads"], 2);
  EXPECT_EQ(pruned["head_dim"], parent["head_dim"]);  // MLA widths untouched
  o.heads = 3;  // any count, but DeepseekV2Config wants hidden_size (64) a multiple of it
  EXPECT_NE(error_of([&] { check_options(c, o); }).find("multiple of num_attention_heads"), std::string::npos);
  o.hidden = 48;
  check_options(c, o);
  o.heads.reset();
  o.kv_heads = 2;
  EXPECT_NE(error_of([&] { check_options(c, o); }).find("no KV groups"), std::string::npos);
  PrunePlan bad = p;
  bad.layers[0].kv_heads = {0};
  EXPECT_NE(error_of([&] { validate_plan(c, bad); }).find("no KV groups"), std::string::npos);
}

TEST(PrunePlanWidth, HiddenKeepsTheStrongestEmbeddingChannels) {
  const auto c = config_of(test::fixture("mixtral_8e_top2"));  // hidden 48, head_dim derived (8)
  ImportanceReport r = blank_report(c);
  for (int i = 0; i < 48; ++i) r.embedding_channels[static_cast<std::size_t>(i)] = (i * 29) % 48;
  PruneOptions o;
  o.hidden = 20;
  const PrunePlan p = build_plan(c, &r, o);
  ASSERT_EQ(p.hidden_channels.size(), 20u);
  for (int ch : p.hidden_channels) EXPECT_GE((ch * 29) % 48, 28) << ch;
  EXPECT_TRUE(std::is_sorted(p.hidden_channels.begin(), p.hidden_channels.end()));
  EXPECT_EQ(plan_shape(c, p).hidden, 20);
  EXPECT_EQ(plan_shape(c, p).heads, -1);
  nlohmann::json parent;
  {
    std::ifstream in(test::fixture("mixtral_8e_top2") / "config.json");
    parent = nlohmann::json::parse(in);
  }
  ASSERT_FALSE(parent.contains("head_dim") && !parent["head_dim"].is_null());
  const nlohmann::json pruned = pruned_config(parent, c, p);
  EXPECT_EQ(pruned["hidden_size"], 20);
  EXPECT_EQ(pruned["head_dim"], 8);  // was hidden_size / num_attention_heads = 48 / 6
  EXPECT_EQ(pruned["num_attention_heads"], 6);
  o.hidden = 48;
  EXPECT_TRUE(build_plan(c, &r, o).hidden_channels.empty());
  for (int bad : {0, 49}) {
    o.hidden = bad;
    EXPECT_NE(error_of([&] { check_options(c, o); }).find("keep between 1 and 48"), std::string::npos);
  }
  ImportanceReport short_report = r;
  short_report.embedding_channels.resize(10);
  o.hidden = 20;
  EXPECT_NE(error_of([&] { build_plan(c, &short_report, o); }).find("another model"), std::string::npos);
}

TEST(PrunePlanWidth, ValidateRejectsBrokenHeadPlans) {
  const auto c = config_of(test::fixture("mixtral_8e_top2"));  // 6 heads, groups {0,1,2} {3,4,5}
  PrunePlan p = PrunePlan::identity(c);
  p.layers[0].heads = {0, 3};
  p.layers[1].heads = {1, 4};
  validate_plan(c, p);
  p.layers[1].heads = {1, 2};  // group 0 keeps 2, group 1 keeps 0
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("same number"), std::string::npos);
  p.layers[1].heads = {0, 1, 3, 4};  // 4 heads vs layer 0's 2
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("attention heads"), std::string::npos);
  p.layers[1].heads = {1, 4};
  p.layers[1].kv_heads = {1};  // head 1 belongs to the dropped group 0
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("drops that group"), std::string::npos);
  p.layers[1].heads = {4, 6};
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("outside 0..5"), std::string::npos);
  p = PrunePlan::identity(c);
  p.layers[0].kv_heads = {1};  // layer 1 keeps 2 KV heads
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("same"), std::string::npos);
  p.layers[1].kv_heads = {0};
  validate_plan(c, p);
  p.hidden_channels = {3, 2};
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("ascending"), std::string::npos);
  p.hidden_channels = {2, 48};
  EXPECT_NE(error_of([&] { validate_plan(c, p); }).find("outside 0..47"), std::string::npos);
}

}  // namespace
}  // namespace refinery::prune
