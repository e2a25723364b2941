#include "engine/model/parameter_count.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>

#include "engine/model/model_config.hpp"

namespace refinery::model {
namespace {

const std::string kDir = std::string(REFINERY_SOURCE_DIR) + "/tests/engine/model/configs/";

ModelConfig load(const std::string& name) { return load_model_config(kDir + name + ".json"); }

const nlohmann::json& expected() {
  static const nlohmann::json j = nlohmann::json::parse(std::ifstream(kDir + "expected_param_counts.json"));
  return j;
}

int64_t hf(const std::string& model, const std::string& bucket) {
  const auto& by = expected().at(model).at("by_name");
  return by.contains(bucket) ? by.at(bucket).get<int64_t>() : 0;
}

// Per-component counts from the config equal what transformers instantiates (made by
// configs/make_param_counts.py on the meta device), exactly.
TEST(ParameterCount, MatchesTransformersExactlyPerComponent) {
  for (const char* name : {"deepseek_v3", "deepseek_v2_lite", "llama_3_1_8b", "mistral_7b_instruct_v0_3",
                           "qwen2_5_7b", "qwen3_8b", "qwen3_30b_a3b", "mixtral_8x7b_v0_1", "qwen1_5_moe_a2_7b"}) {
    SCOPED_TRACE(name);
    ParameterCounts p = count_parameters(load(name));
    const int64_t bias_buffer = expected().at(name).at("e_score_correction_bias_buffer").get<int64_t>();
    EXPECT_EQ(p.embedding, hf(name, "embedding"));
    EXPECT_EQ(p.lm_head, hf(name, "lm_head"));
    EXPECT_EQ(p.attention, hf(name, "attention"));
    EXPECT_EQ(p.norms, hf(name, "norms"));
    EXPECT_EQ(p.dense_mlp, hf(name, "dense_mlp"));
    EXPECT_EQ(p.routed_experts, hf(name, "routed_experts"));
    EXPECT_EQ(p.shared_experts, hf(name, "shared_experts"));
    EXPECT_EQ(p.routers, hf(name, "routers") + bias_buffer);
    EXPECT_EQ(p.total(), expected().at(name).at("num_parameters").get<int64_t>() + bias_buffer);
  }
}

// Published totals / active counts, within 1% (the published ones are rounded to 0.1B).
struct Published {
  const char* name;
  double total_b, active_b;
  bool active_excludes_embedding;
};

TEST(ParameterCount, MatchesPublishedTotalsAndActive) {
  const Published table[] = {
      // DeepSeek-V3: "671B total, 37B activated"; README_WEIGHTS: 36.6B active excluding the
      // input embedding, main model without the 14B MTP module.
      {"deepseek_v3", 671.0, 36.6, true},
      // DeepSeek-V2-Lite "15.7B total, 2.4B activated": DeepSeek again leaves out the input embedding.
      {"deepseek_v2_lite", 15.7, 2.4, true},
      {"mixtral_8x7b_v0_1", 46.7, 12.9, false},
      {"qwen3_30b_a3b", 30.5, 3.3, false},
      {"qwen1_5_moe_a2_7b", 14.3, 2.7, false},
      {"llama_3_1_8b", 8.03, 8.03, false},
  };
  for (const auto& t : table) {
    SCOPED_TRACE(t.name);
    ParameterCounts p = count_parameters(load(t.name));
    EXPECT_NEAR(p.total() / 1e9, t.total_b, 0.01 * t.total_b);
    const double active = (t.active_excludes_embedding ? p.active_excluding_embedding() : p.active()) / 1e9;
    EXPECT_NEAR(active, t.active_b, 0.01 * t.active_b + 0.05);
  }
  ParameterCounts ds = count_parameters(load("deepseek_v3"));
  EXPECT_NEAR(ds.active() / 1e9, 37.5, 0.1);  // with the embedding: the "37B" of the paper
  // DeepSeek says the MTP module has 11.5B unique parameters (its embedding and head are shared).
  EXPECT_NEAR(ds.mtp / 1e9, 11.5, 0.15);
  EXPECT_EQ(count_parameters(load("llama_3_1_8b")).total(), 8030261248);
}

TEST(ParameterCount, TiedEmbeddingIsCountedOnce) {
  nlohmann::json j = nlohmann::json::parse(std::ifstream(kDir + "qwen3_8b.json"));
  j["tie_word_embeddings"] = true;
  ParameterCounts tied = count_parameters(parse_model_config(j, "tied"));
  ParameterCounts untied = count_parameters(load("qwen3_8b"));
  EXPECT_EQ(tied.lm_head, 0);
  EXPECT_EQ(untied.total() - tied.total(), int64_t{151936} * 4096);
}

TEST(TensorRole, ClassifiesHuggingFaceNames) {
  ModelConfig ds = load("deepseek_v3");
  struct Case {
    const char* name;
    Component component;
    TensorKind kind;
    int layer, expert;
  } cases[] = {
      {"model.embed_tokens.weight", Component::kEmbedding, TensorKind::kWeight, -1, -1},
      {"lm_head.weight", Component::kLmHead, TensorKind::kWeight, -1, -1},
      {"model.norm.weight", Component::kNorm, TensorKind::kWeight, -1, -1},
      {"model.layers.3.mlp.experts.17.gate_proj.weight", Component::kRoutedExperts, TensorKind::kWeight, 3, 17},
      {"model.layers.3.mlp.experts.17.gate_proj.weight_scale_inv", Component::kRoutedExperts,
       TensorKind::kFp8ScaleInv, 3, 17},
      {"model.layers.3.mlp.shared_experts.down_proj.weight", Component::kSharedExperts, TensorKind::kWeight, 3, -1},
      {"model.layers.3.mlp.gate.weight", Component::kRouter, TensorKind::kWeight, 3, -1},
      {"model.layers.3.mlp.gate.e_score_correction_bias", Component::kRouter, TensorKind::kWeight, 3, -1},
      {"model.layers.0.mlp.up_proj.weight", Component::kDenseMlp, TensorKind::kWeight, 0, -1},
      {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight", Component::kAttention, TensorKind::kWeight, 0, -1},
      {"model.layers.0.self_attn.kv_a_layernorm.weight", Component::kNorm, TensorKind::kWeight, 0, -1},
      {"model.layers.0.self_attn.q_a_layernorm.weight", Component::kNorm, TensorKind::kWeight, 0, -1},
      {"model.layers.60.post_attention_layernorm.weight", Component::kNorm, TensorKind::kWeight, 60, -1},
      {"model.layers.61.eh_proj.weight", Component::kMtp, TensorKind::kWeight, 61, -1},
      {"model.layers.61.shared_head.head.weight", Component::kMtp, TensorKind::kWeight, 61, -1},
      {"model.layers.61.mlp.experts.3.up_proj.weight", Component::kMtp, TensorKind::kWeight, 61, -1},
      // mixtral, qwen2_moe, qwen3, AWQ, transformers 5.x fused
      {"model.layers.5.block_sparse_moe.experts.7.w2.weight", Component::kRoutedExperts, TensorKind::kWeight, 5, 7},
      {"model.layers.5.block_sparse_moe.gate.weight", Component::kRouter, TensorKind::kWeight, 5, -1},
      {"model.layers.2.mlp.shared_expert.gate_proj.weight", Component::kSharedExperts, TensorKind::kWeight, 2, -1},
      {"model.layers.2.mlp.shared_expert_gate.weight", Component::kSharedExperts, TensorKind::kWeight, 2, -1},
      {"model.layers.2.self_attn.q_proj.bias", Component::kAttention, TensorKind::kBias, 2, -1},
      {"model.layers.2.self_attn.k_norm.weight", Component::kNorm, TensorKind::kWeight, 2, -1},
      {"model.layers.4.self_attn.o_proj.qweight", Component::kAttention, TensorKind::kAwqQweight, 4, -1},
      {"model.layers.4.mlp.experts.1.down_proj.qzeros", Component::kRoutedExperts, TensorKind::kAwqQzeros, 4, 1},
      {"model.layers.4.mlp.experts.1.down_proj.scales", Component::kRoutedExperts, TensorKind::kAwqScales, 4, 1},
      {"model.layers.4.mlp.experts.gate_up_proj", Component::kRoutedExperts, TensorKind::kWeight, 4, -1},
      {"model.rotary_emb.inv_freq", Component::kOther, TensorKind::kWeight, -1, -1},
      {"model.layers.x.mlp.gate.weight", Component::kOther, TensorKind::kWeight, -1, -1},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    TensorRole r = classify_tensor(c.name, ds);
    EXPECT_EQ(r.component, c.component) << component_name(r.component);
    EXPECT_EQ(r.kind, c.kind);
    EXPECT_EQ(r.layer, c.layer);
    EXPECT_EQ(r.expert, c.expert);
  }
  EXPECT_TRUE(classify_tensor("model.layers.4.mlp.experts.gate_up_proj", ds).fused_experts);
  EXPECT_FALSE(classify_tensor("model.layers.4.mlp.experts.0.gate_proj.weight", ds).fused_experts);
}

// Tallying transformers 5.x's own (fused-expert) tensor list gives the config's counts.
TEST(ParameterCount, TallyOfTransformers5TensorsMatchesConfig) {
  for (const char* name : {"mixtral_8x7b_v0_1", "qwen1_5_moe_a2_7b", "deepseek_v3", "qwen3_8b"}) {
    SCOPED_TRACE(name);
    ModelConfig c = load(name);
    CheckpointParameterTally tally(c);
    nlohmann::json tensors = nlohmann::json::parse(std::ifstream(kDir + "tensors_v5_" + name + ".json"));
    for (const auto& t : tensors) tally.add(t.at(0).get<std::string>(), t.at(1).get<std::vector<int64_t>>());
    ParameterCounts got = tally.counts();
    ParameterCounts want = count_parameters(c);
    EXPECT_TRUE(tally.unrecognized().empty()) << tally.unrecognized().front();
    EXPECT_EQ(got.attention, want.attention);
    EXPECT_EQ(got.routed_experts, want.routed_experts);
    EXPECT_EQ(got.routers, want.routers);
    EXPECT_EQ(got.shared_experts, want.shared_experts);
    EXPECT_EQ(got.norms, want.norms);
    EXPECT_EQ(got.total(), want.total());
    EXPECT_EQ(got.active(), want.active());
  }
}

// A per-expert, quantized checkpoint: AWQ qweight counts 8 weights per int32, metadata counts 0;
// FP8 scales count 0.
TEST(ParameterCount, TallyOfQuantizedPerExpertNames) {
  ModelConfig awq = load("mixtral_8x7b_instruct_awq");
  CheckpointParameterTally t(awq);
  t.add("model.layers.0.block_sparse_moe.experts.0.w1.qweight", {4096, 14336 / 8});
  t.add("model.layers.0.block_sparse_moe.experts.0.w1.qzeros", {32, 14336 / 8});
  t.add("model.layers.0.block_sparse_moe.experts.0.w1.scales", {32, 14336});
  t.add("model.layers.0.block_sparse_moe.gate.weight", {8, 4096});
  ParameterCounts p = t.counts();
  EXPECT_EQ(p.routed_experts, int64_t{4096} * 14336);
  EXPECT_EQ(p.routers, 8 * 4096);
  EXPECT_EQ(p.routed_experts_active, int64_t{4096} * 14336 / 8 * 2);

  ModelConfig ds = load("deepseek_v3");
  CheckpointParameterTally f(ds);
  f.add("model.layers.3.mlp.experts.0.down_proj.weight", {7168, 2048});
  f.add("model.layers.3.mlp.experts.0.down_proj.weight_scale_inv", {56, 16});
  f.add("model.layers.61.enorm.weight", {7168});
  f.add("model.rotary_emb.inv_freq", {32});
  p = f.counts();
  EXPECT_EQ(p.routed_experts, int64_t{7168} * 2048);
  EXPECT_EQ(p.mtp, 7168);
  EXPECT_EQ(p.other, 32);
  ASSERT_EQ(f.unrecognized().size(), 1u);
  EXPECT_EQ(f.unrecognized()[0], "model.rotary_emb.inv_freq");
  EXPECT_EQ(p.total(), int64_t{7168} * 2048 + 32);  // mtp excluded
}

}  // namespace
}  // namespace refinery::model
