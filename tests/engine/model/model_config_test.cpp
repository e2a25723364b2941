#include "engine/model/model_config.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>

#include "engine/core/error.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::model {
namespace {

using refinery::test::error_message_of;

std::string config_path(const std::string& name) {
  return std::string(REFINERY_SOURCE_DIR) + "/tests/engine/model/configs/" + name + ".json";
}
ModelConfig load(const std::string& name) { return load_model_config(config_path(name)); }

nlohmann::json minimal_llama() {
  return nlohmann::json{{"model_type", "llama"},       {"vocab_size", 1000},           {"hidden_size", 64},
                        {"num_hidden_layers", 2},      {"intermediate_size", 128},     {"num_attention_heads", 4},
                        {"max_position_embeddings", 256}};
}

TEST(ModelConfig, DeepSeekV3Release) {
  ModelConfig c = load("deepseek_v3");
  EXPECT_EQ(c.family, ModelFamily::kDeepseekV3);
  EXPECT_EQ(c.hidden_size, 7168);
  EXPECT_EQ(c.num_layers, 61);
  EXPECT_EQ(c.vocab_size, 129280);
  const AttentionConfig& a = c.attention;
  EXPECT_EQ(a.kind, AttentionKind::kMla);
  ASSERT_TRUE(a.q_lora_rank.has_value());
  EXPECT_EQ(*a.q_lora_rank, 1536);
  EXPECT_EQ(a.kv_lora_rank, 512);
  EXPECT_EQ(a.qk_nope_head_dim, 128);
  EXPECT_EQ(a.qk_rope_head_dim, 64);
  EXPECT_EQ(a.v_head_dim, 128);
  EXPECT_EQ(a.head_dim, 192);
  EXPECT_FALSE(a.o_bias);
  // softmax scale: 192^-0.5 * (0.1 * 1.0 * ln 40 + 1)^2 (transformers' yarn_apply_mscale)
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_NEAR(a.softmax_scale, m * m / std::sqrt(192.0), 1e-12);
  ASSERT_TRUE(c.moe.has_value());
  const MoeConfig& e = *c.moe;
  EXPECT_EQ(e.num_experts, 256);
  EXPECT_EQ(e.experts_per_token, 8);
  EXPECT_EQ(e.expert_intermediate_size, 2048);
  EXPECT_EQ(e.scoring, RouterScoring::kSigmoid);
  EXPECT_EQ(e.topk_method, TopkMethod::kNoauxTc);
  EXPECT_TRUE(e.score_correction_bias);
  EXPECT_EQ(e.n_group, 8);
  EXPECT_EQ(e.topk_group, 4);
  EXPECT_TRUE(e.norm_topk_prob);
  EXPECT_DOUBLE_EQ(e.routed_scaling_factor, 2.5);
  EXPECT_EQ(e.num_shared_experts, 1);
  EXPECT_EQ(e.shared_intermediate_size, 2048);
  EXPECT_FALSE(e.shared_expert_gate);
  EXPECT_FALSE(c.layer_is_moe(0));
  EXPECT_FALSE(c.layer_is_moe(2));
  EXPECT_TRUE(c.layer_is_moe(3));
  EXPECT_TRUE(c.layer_is_moe(60));
  EXPECT_FALSE(c.layer_is_moe(61));  // the MTP layer is not a decoder layer
  EXPECT_EQ(c.num_moe_layers(), 58);
  EXPECT_EQ(c.num_mtp_layers, 1);
  EXPECT_EQ(c.rope.type, RopeType::kYarn);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 40.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.rope.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.mscale_all_dim, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.attention_factor, 1.0);  // mscale == mscale_all_dim cancel
  EXPECT_EQ(c.rope.pairing, RopePairing::kInterleaved);
  EXPECT_EQ(c.rope.rotary_dim, 64);
  EXPECT_EQ(c.quant.method, QuantMethod::kFp8Block);
  EXPECT_EQ(c.quant.block_out, 128);
  EXPECT_EQ(c.quant.block_in, 128);
  EXPECT_EQ(c.quant.activation_scheme, "dynamic");
  ASSERT_TRUE(c.dtype.has_value());
  EXPECT_EQ(*c.dtype, DType::kBF16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(ModelConfig, DeepSeekV2LiteHasNoQLoraAndGreedySoftmax) {
  ModelConfig c = load("deepseek_v2_lite");
  EXPECT_EQ(c.family, ModelFamily::kDeepseekV2);
  EXPECT_FALSE(c.attention.q_lora_rank.has_value());
  EXPECT_EQ(c.attention.kv_lora_rank, 512);
  ASSERT_TRUE(c.moe);
  EXPECT_EQ(c.moe->num_experts, 64);
  EXPECT_EQ(c.moe->experts_per_token, 6);
  EXPECT_EQ(c.moe->scoring, RouterScoring::kSoftmax);
  EXPECT_EQ(c.moe->topk_method, TopkMethod::kGreedy);
  EXPECT_FALSE(c.moe->score_correction_bias);
  EXPECT_FALSE(c.moe->norm_topk_prob);
  EXPECT_EQ(c.moe->num_shared_experts, 2);
  EXPECT_EQ(c.moe->shared_intermediate_size, 2 * 1408);
  EXPECT_FALSE(c.layer_is_moe(0));
  EXPECT_TRUE(c.layer_is_moe(1));
  EXPECT_EQ(c.num_moe_layers(), 26);
  EXPECT_EQ(c.rope.pairing, RopePairing::kInterleaved);
  // yarn with mscale = mscale_all_dim = 0.707: cos/sin factor 1, softmax scale * mscale(40, 0.707)^2
  EXPECT_DOUBLE_EQ(c.rope.attention_factor, 1.0);
  const double m = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(c.attention.softmax_scale, m * m / std::sqrt(192.0), 1e-12);
  EXPECT_EQ(c.num_mtp_layers, 0);
  EXPECT_EQ(c.quant.method, QuantMethod::kNone);
}

TEST(ModelConfig, MixtralExpertsAreTheIntermediateSize) {
  ModelConfig c = load("mixtral_8x7b_v0_1");
  EXPECT_EQ(c.family, ModelFamily::kMixtral);
  EXPECT_EQ(c.attention.kind, AttentionKind::kGqa);
  EXPECT_EQ(c.attention.num_heads, 32);
  EXPECT_EQ(c.attention.num_kv_heads, 8);
  EXPECT_EQ(c.attention.head_dim, 128);
  EXPECT_FALSE(c.attention.qkv_bias);
  ASSERT_TRUE(c.moe);
  EXPECT_EQ(c.moe->num_experts, 8);
  EXPECT_EQ(c.moe->experts_per_token, 2);
  EXPECT_EQ(c.moe->expert_intermediate_size, 14336);
  EXPECT_TRUE(c.moe->norm_topk_prob);
  EXPECT_EQ(c.moe->num_shared_experts, 0);
  EXPECT_EQ(c.num_moe_layers(), 32);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rope.type, RopeType::kDefault);
  EXPECT_EQ(c.rope.pairing, RopePairing::kHalfSplit);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_FALSE(c.sliding_window.has_value());  // "sliding_window": null
}

TEST(ModelConfig, Llama31UsesLlama3Rope) {
  ModelConfig c = load("llama_3_1_8b");
  EXPECT_EQ(c.family, ModelFamily::kLlama);
  EXPECT_EQ(c.rope.type, RopeType::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.rope.rotary_dim, 128);
  EXPECT_EQ(c.attention.num_kv_heads, 8);
  EXPECT_FALSE(c.attention.qkv_bias);
  EXPECT_FALSE(c.attention.o_bias);
  EXPECT_FALSE(c.attention.qk_norm);
  EXPECT_FALSE(c.is_moe());
  EXPECT_FALSE(c.layer_is_moe(0));
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
}

TEST(ModelConfig, MistralToDictDumpParses) {
  ModelConfig c = load("mistral_7b_instruct_v0_3");
  EXPECT_EQ(c.family, ModelFamily::kMistral);
  EXPECT_EQ(c.vocab_size, 32768);
  EXPECT_EQ(c.attention.head_dim, 128);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);
}

TEST(ModelConfig, Qwen2AlwaysHasQkvBiasAndNoOBias) {
  ModelConfig c = load("qwen2_5_7b");
  EXPECT_EQ(c.family, ModelFamily::kQwen2);
  EXPECT_TRUE(c.attention.qkv_bias);
  EXPECT_FALSE(c.attention.o_bias);
  EXPECT_FALSE(c.attention.qk_norm);
  EXPECT_EQ(c.attention.head_dim, 3584 / 28);
  EXPECT_EQ(c.attention.num_kv_heads, 4);
}

TEST(ModelConfig, Qwen3HasQkNormAndExplicitHeadDim) {
  ModelConfig c = load("qwen3_8b");
  EXPECT_EQ(c.family, ModelFamily::kQwen3);
  EXPECT_TRUE(c.attention.qk_norm);
  EXPECT_FALSE(c.attention.qkv_bias);
  EXPECT_EQ(c.attention.head_dim, 128);
  // Without the field, qwen3's default head_dim is 128 (not hidden/heads).
  nlohmann::json j = nlohmann::json::parse(std::ifstream(config_path("qwen3_8b")));
  j.erase("head_dim");
  j["hidden_size"] = 2048;
  EXPECT_EQ(parse_model_config(j, "qwen3 without head_dim").attention.head_dim, 128);
}

TEST(ModelConfig, Qwen3MoeLayers) {
  ModelConfig c = load("qwen3_30b_a3b");
  ASSERT_TRUE(c.moe);
  EXPECT_EQ(c.moe->num_experts, 128);
  EXPECT_EQ(c.moe->experts_per_token, 8);
  EXPECT_EQ(c.moe->expert_intermediate_size, 768);
  EXPECT_TRUE(c.moe->norm_topk_prob);
  EXPECT_EQ(c.num_moe_layers(), 48);
  EXPECT_TRUE(c.attention.qk_norm);
  // decoder_sparse_step and mlp_only_layers as transformers reads them
  nlohmann::json j = nlohmann::json::parse(std::ifstream(config_path("qwen3_30b_a3b")));
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  ModelConfig s = parse_model_config(j, "sparse step 2");
  EXPECT_FALSE(s.layer_is_moe(0));
  EXPECT_TRUE(s.layer_is_moe(1));
  EXPECT_FALSE(s.layer_is_moe(3));  // (3+1) % 2 == 0 but listed in mlp_only_layers
  EXPECT_TRUE(s.layer_is_moe(5));
  EXPECT_EQ(s.num_moe_layers(), 23);
}

TEST(ModelConfig, Qwen2MoeSharedExpertWithSigmoidGate) {
  ModelConfig c = load("qwen1_5_moe_a2_7b");
  EXPECT_EQ(c.family, ModelFamily::kQwen2Moe);
  EXPECT_TRUE(c.attention.qkv_bias);
  EXPECT_FALSE(c.attention.o_bias);
  ASSERT_TRUE(c.moe);
  EXPECT_EQ(c.moe->num_experts, 60);
  EXPECT_EQ(c.moe->experts_per_token, 4);
  EXPECT_FALSE(c.moe->norm_topk_prob);
  EXPECT_EQ(c.moe->num_shared_experts, 1);
  EXPECT_EQ(c.moe->shared_intermediate_size, 5632);
  EXPECT_TRUE(c.moe->shared_expert_gate);
  ASSERT_TRUE(c.dtype);
  EXPECT_EQ(*c.dtype, DType::kF16);
}

TEST(ModelConfig, AwqQuantizationConfig) {
  ModelConfig c = load("mixtral_8x7b_instruct_awq");
  EXPECT_EQ(c.quant.method, QuantMethod::kAwq);
  EXPECT_EQ(c.quant.bits, 4);
  EXPECT_EQ(c.quant.group_size, 128);
  EXPECT_TRUE(c.quant.zero_point);
  EXPECT_EQ(c.quant.version, AwqVersion::kGemm);
  EXPECT_EQ(c.quant.modules_to_not_convert, std::vector<std::string>{"gate"});
}

// transformers 5.x files: rope_parameters (with rope_theta inside), dtype, head_dim = qk_rope for MLA.
TEST(ModelConfig, Transformers5FilesMatchTheir4xSources) {
  for (const char* name : {"deepseek_v3", "deepseek_v2_lite", "llama_3_1_8b", "qwen3_30b_a3b",
                           "mixtral_8x7b_v0_1", "qwen1_5_moe_a2_7b"}) {
    SCOPED_TRACE(name);
    ModelConfig v4 = load(name);
    ModelConfig v5 = load(std::string("v5/") + name);
    EXPECT_EQ(v5.family, v4.family);
    EXPECT_EQ(v5.attention.head_dim, v4.attention.head_dim);
    EXPECT_EQ(v5.attention.qkv_bias, v4.attention.qkv_bias);
    EXPECT_DOUBLE_EQ(v5.attention.softmax_scale, v4.attention.softmax_scale);
    EXPECT_EQ(v5.rope.type, v4.rope.type);
    EXPECT_DOUBLE_EQ(v5.rope.theta, v4.rope.theta);
    EXPECT_DOUBLE_EQ(v5.rope.factor, v4.rope.factor);
    EXPECT_DOUBLE_EQ(v5.rope.attention_factor, v4.rope.attention_factor);
    EXPECT_EQ(v5.rope.original_max_position_embeddings, v4.rope.original_max_position_embeddings);
    EXPECT_EQ(v5.rope.pairing, v4.rope.pairing);
    EXPECT_EQ(v5.dtype, v4.dtype);
    EXPECT_EQ(v5.num_moe_layers(), v4.num_moe_layers());
    EXPECT_EQ(v5.quant.method, v4.quant.method);
  }
  EXPECT_DOUBLE_EQ(load("v5/llama_3_1_8b").rope.theta, 500000.0);
}

TEST(ModelConfig, RopeScalingAcceptsOldTypeKeyAndLinear) {
  nlohmann::json j = minimal_llama();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  ModelConfig c = parse_model_config(j, "linear");
  EXPECT_EQ(c.rope.type, RopeType::kLinear);
  EXPECT_DOUBLE_EQ(c.rope.factor, 2.0);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  // Yarn without mscale: attention_factor = 0.1 ln(factor) + 1; original defaults to max_position.
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  c = parse_model_config(j, "yarn");
  EXPECT_NEAR(c.rope.attention_factor, 0.1 * std::log(4.0) + 1.0, 1e-15);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 256);
  EXPECT_NEAR(c.attention.softmax_scale, 1.0 / std::sqrt(16.0), 1e-15);  // GQA: no mscale on softmax
}

TEST(ModelConfig, DefaultsWhenOptionalFieldsAreAbsent) {
  ModelConfig c = parse_model_config(minimal_llama(), "minimal");
  EXPECT_EQ(c.attention.num_kv_heads, 4);  // llama: kv heads default to the query heads
  EXPECT_EQ(c.attention.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.dtype.has_value());
  nlohmann::json j = minimal_llama();
  j["model_type"] = "mistral";
  j["num_attention_heads"] = 16;
  c = parse_model_config(j, "mistral minimal");
  EXPECT_EQ(c.attention.num_kv_heads, 8);  // mistral's default, not the query heads
  ASSERT_TRUE(c.sliding_window.has_value());
  EXPECT_EQ(*c.sliding_window, 4096);  // mistral's default window when the key is absent
  j["attention_bias"] = true;
  j["model_type"] = "llama";
  j["tie_word_embeddings"] = true;
  c = parse_model_config(j, "llama bias");
  EXPECT_TRUE(c.attention.qkv_bias);
  EXPECT_TRUE(c.attention.o_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
}

// ---- malformed configs ----

TEST(ModelConfigErrors, UnknownModelTypeListsSupported) {
  nlohmann::json j = minimal_llama();
  j["model_type"] = "gpt2";
  std::string msg = error_message_of([&] { parse_model_config(j, "cfg.json"); });
  EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\"gpt2\""), std::string::npos) << msg;
  for (const auto& t : supported_model_types()) EXPECT_NE(msg.find(t), std::string::npos) << t << ": " << msg;
}

TEST(ModelConfigErrors, MissingFieldNamesFileFieldAndMeaning) {
  nlohmann::json j = minimal_llama();
  j.erase("hidden_size");
  std::string msg = error_message_of([&] { parse_model_config(j, "dir/config.json"); });
  EXPECT_NE(msg.find("dir/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("`hidden_size`"), std::string::npos) << msg;
  EXPECT_NE(msg.find("residual stream"), std::string::npos) << msg;
  EXPECT_NE(msg.find("missing"), std::string::npos) << msg;

  nlohmann::json ds = nlohmann::json::parse(std::ifstream(config_path("deepseek_v3")));
  ds.erase("q_lora_rank");
  msg = error_message_of([&] { parse_model_config(ds, "ds.json"); });
  EXPECT_NE(msg.find("q_lora_rank"), std::string::npos) << msg;
}

TEST(ModelConfigErrors, WrongTypeSaysExpectedAndFound) {
  nlohmann::json j = minimal_llama();
  j["num_hidden_layers"] = "32";
  std::string msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("`num_hidden_layers`"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected an integer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("found a string (\"32\")"), std::string::npos) << msg;

  j = minimal_llama();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", "2"}};
  msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("`rope_scaling.factor`"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected a number"), std::string::npos) << msg;

  j = minimal_llama();
  j["tie_word_embeddings"] = 1;
  msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("expected a boolean"), std::string::npos) << msg;

  msg = error_message_of([&] { parse_model_config(nlohmann::json::array(), "arr.json"); });
  EXPECT_NE(msg.find("expected a JSON object"), std::string::npos) << msg;
}

TEST(ModelConfigErrors, UnsupportedRopeTypes) {
  nlohmann::json j = minimal_llama();
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  std::string msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("dynamic"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not supported"), std::string::npos) << msg;
  EXPECT_NE(msg.find("yarn"), std::string::npos) << msg;
  j["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 2.0}};
  msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("longrope"), std::string::npos) << msg;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("low_freq_factor"), std::string::npos) << msg;
}

TEST(ModelConfigErrors, UnsupportedQuantizationAndRouting) {
  nlohmann::json j = minimal_llama();
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  std::string msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("gptq"), std::string::npos) << msg;
  EXPECT_NE(msg.find("awq"), std::string::npos) << msg;
  j["quantization_config"] = {{"quant_method", "fp8"}};
  msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("weight_block_size"), std::string::npos) << msg;
  j["quantization_config"] = {{"quant_method", "awq"}, {"version", "exllama"}};
  msg = error_message_of([&] { parse_model_config(j, "c.json"); });
  EXPECT_NE(msg.find("exllama"), std::string::npos) << msg;

  nlohmann::json ds = nlohmann::json::parse(std::ifstream(config_path("deepseek_v3")));
  ds["topk_method"] = "greedy";
  msg = error_message_of([&] { parse_model_config(ds, "ds.json"); });
  EXPECT_NE(msg.find("noaux_tc"), std::string::npos) << msg;
  ds = nlohmann::json::parse(std::ifstream(config_path("deepseek_v3")));
  ds["num_experts_per_tok"] = 300;
  msg = error_message_of([&] { parse_model_config(ds, "ds.json"); });
  EXPECT_NE(msg.find("num_experts_per_tok"), std::string::npos) << msg;
}

TEST(ModelConfigErrors, MissingFileAndBadJson) {
  std::string msg = error_message_of([] { load_model_config("/nonexistent/model"); });
  EXPECT_NE(msg.find("/nonexistent/model"), std::string::npos) << msg;
  msg = error_message_of([] {
    parse_model_config(nlohmann::json{{"model_type", "llama"}, {"hidden_size", -5}}, "neg.json");
  });
  EXPECT_NE(msg.find("neg.json"), std::string::npos) << msg;
}

}  // namespace
}  // namespace refinery::model
