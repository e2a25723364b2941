// KV cache, taps, generation, the LanguageModel seam, load errors and the demo model.
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/backend/cuda/device_info.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/model/generate.hpp"
#include "engine/model/language_model.hpp"
#include "engine/model/model_weights.hpp"
#include "model_test_util.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::model {
namespace {

using test::max_abs;
using test::max_abs_diff;
using test::values;

class CacheTest : public ::testing::TestWithParam<std::string> {};

// Prefill of 9 tokens, then one token at a time, gives the logits of one full forward.
TEST_P(CacheTest, PrefillThenDecodeEqualsFullForward) {
  auto model = test::load_fixture(GetParam());
  const auto ids = test::Reference(GetParam()).ids("input_ids_2");
  const auto full = values(model->forward(ids));
  const int64_t vocab = model->config().vocab_size, prefill = 9;
  KvCache cache = model->make_cache(2);  // small on purpose: the cache must grow
  std::vector<float> stepped = values(model->forward(std::span(ids).first(prefill), &cache));
  for (std::size_t i = prefill; i < ids.size(); ++i) {
    const auto row = values(model->forward(std::span(ids).subspan(i, 1), &cache));
    ASSERT_EQ(int64_t(row.size()), vocab);
    stepped.insert(stepped.end(), row.begin(), row.end());
  }
  EXPECT_EQ(cache.length(), int64_t(ids.size()));
  EXPECT_LE(max_abs_diff(stepped, full), 1e-5 * max_abs(full)) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(EngineKvCache, CacheTest,
                         ::testing::Values("llama_gqa_llama3", "qwen3_qknorm_tied",
                                           "mixtral_8e_top2", "deepseek_v2_lite",
                                           "deepseek_v3_fp8"),
                         [](const auto& info) { return info.param; });

TEST(EngineTaps, DeliversNamesAndShapes) {
  auto model = test::load_fixture("qwen2_moe_shared");
  const ModelConfig& c = model->config();
  const std::vector<int32_t> ids = {5, 17, 3, 99, 42};
  const int64_t t = 5, h = c.hidden_size, e = c.moe->num_experts, k = c.moe->experts_per_token;
  test::Recorder rec;
  const auto logits = values(model->forward(ids, nullptr, &rec));
  auto shape = [&](const std::string& n) {
    EXPECT_TRUE(rec.seen.count(n)) << "missing tap " << n;
    return rec.seen.count(n) ? rec.seen[n].shape() : std::vector<int64_t>{};
  };
  using S = std::vector<int64_t>;
  EXPECT_EQ(shape("layers.0.input"), (S{t, h}));
  EXPECT_EQ(shape("layers.2.output"), (S{t, h}));
  EXPECT_EQ(shape("layers.0.self_attn.q_proj.input"), (S{t, h}));
  EXPECT_EQ(shape("layers.0.self_attn.o_proj.input"),
            (S{t, c.attention.num_heads * c.attention.head_dim}));
  EXPECT_EQ(shape("layers.0.mlp.gate.input"), (S{t, h}));
  EXPECT_EQ(shape("layers.0.mlp.gate.logits"), (S{t, e}));
  EXPECT_EQ(shape("layers.0.mlp.gate.experts"), (S{t, k}));
  EXPECT_EQ(rec.seen["layers.0.mlp.gate.experts"].dtype(), DType::kI32);
  EXPECT_EQ(shape("layers.0.mlp.gate.weights"), (S{t, k}));
  EXPECT_EQ(shape("layers.0.mlp.shared_expert.down_proj.input"),
            (S{t, c.moe->shared_intermediate_size}));
  EXPECT_EQ(shape("layers.0.mlp.shared_expert_gate.input"), (S{t, h}));
  EXPECT_EQ(shape("layers.1.mlp.down_proj.input"),
            (S{t, c.intermediate_size}));  // mlp_only_layers [1]
  EXPECT_EQ(shape("norm.output"), (S{t, h}));
  EXPECT_EQ(shape("lm_head.input"), (S{t, h}));
  // Expert linears see exactly the tokens routed to them: t*k rows over all experts of a layer.
  int64_t rows = 0;
  for (int64_t x = 0; x < e; ++x) {
    const std::string n = "layers.0.mlp.experts." + std::to_string(x) + ".gate_proj.input";
    if (rec.seen.count(n)) {
      rows += rec.seen[n].size(0);
      EXPECT_EQ(
          rec.seen.at("layers.0.mlp.experts." + std::to_string(x) + ".down_proj.input").shape(),
          (S{rec.seen[n].size(0), c.moe->expert_intermediate_size}));
    }
  }
  EXPECT_EQ(rows, t * k);
  // Layer order: the block input comes before its first linear, its output after the last.
  const auto pos = [&](const std::string& n) {
    return std::find(rec.order.begin(), rec.order.end(), n) - rec.order.begin();
  };
  EXPECT_LT(pos("layers.0.input"), pos("layers.0.self_attn.q_proj.input"));
  EXPECT_LT(pos("layers.0.mlp.shared_expert_gate.input"), pos("layers.0.output"));
  // Taps (which run the experts one by one) do not change the result.
  EXPECT_EQ(max_abs_diff(logits, values(model->forward(ids))), 0.0);
  // A selective observer only gets what it asks for.
  test::Recorder only;
  only.filter = [](std::string_view n) { return n == "layers.1.output"; };
  model->forward(ids, nullptr, &only);
  EXPECT_EQ(only.order, std::vector<std::string>{"layers.1.output"});
}

TEST(EngineGenerate, GreedyEqualsArgmaxOfFullForward) {
  for (const char* name : {"llama_gqa_llama3", "deepseek_v3_noaux"}) {
    auto model = test::load_fixture(name);
    const std::vector<int32_t> prompt = {7, 100, 3, 250};
    GenerationOptions o;
    o.max_new_tokens = 8;
    const GenerationResult r = generate(*model, prompt, o);
    ASSERT_EQ(r.tokens.size(), 8u);
    EXPECT_FALSE(r.stopped);
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), r.tokens.begin(), r.tokens.end() - 1);
    const Tensor logits = model->forward(all);
    const int64_t vocab = model->config().vocab_size;
    for (std::size_t i = 0; i < r.tokens.size(); ++i) {
      const float* row = logits.data<float>() + (prompt.size() - 1 + i) * vocab;
      EXPECT_EQ(r.tokens[i], std::max_element(row, row + vocab) - row) << name << " step " << i;
    }
  }
}

TEST(EngineGenerate, SeededSamplingIsDeterministicAndStopsAtEos) {
  auto model = test::load_fixture("qwen3_moe_normtopk");
  const std::vector<int32_t> prompt = {1, 2, 3};
  GenerationOptions o;
  o.max_new_tokens = 12;
  o.temperature = 1.5;
  o.top_p = 0.9;
  o.seed = 42;
  const auto a = generate(*model, prompt, o), b = generate(*model, prompt, o);
  EXPECT_EQ(a.tokens, b.tokens);
  o.seed = 43;
  EXPECT_NE(generate(*model, prompt, o).tokens, a.tokens);
  o.seed = 42;
  o.stop_ids = {a.tokens[3]};
  const auto c = generate(*model, prompt, o);
  EXPECT_TRUE(c.stopped);
  EXPECT_LE(c.tokens.size(), 4u);
  EXPECT_EQ(c.tokens.back(), a.tokens[3]);
}

TEST(EngineGenerate, SampleTokenRespectsTopP) {
  std::mt19937_64 rng(1);
  const std::vector<float> logits = {0.0f, 5.0f, 4.9f, -3.0f};
  for (int i = 0; i < 200; ++i) {
    const int32_t tkn = sample_token(logits, 1.0, 0.5, rng);  // nucleus = {1} (p1 ≈ 0.52)
    EXPECT_EQ(tkn, 1);
  }
  std::set<int32_t> seen;
  for (int i = 0; i < 200; ++i) seen.insert(sample_token(logits, 1.0, 0.95, rng));
  EXPECT_EQ(seen, (std::set<int32_t>{1, 2}));
  EXPECT_EQ(sample_token(logits, 0.0, 1.0, rng), 1);
}

TEST(EngineLanguageModel, ScoreDeliversChunksEqualToForward) {
  const auto dir = test::fixtures_dir() / "mixtral_8e_top2";
  auto lm = open_language_model(dir);
  const auto ids = test::Reference("mixtral_8e_top2").ids("input_ids_2");
  const auto want = test::Reference("mixtral_8e_top2").floats("logits_2");
  std::vector<float> got;
  std::vector<int64_t> firsts;
  lm->score(
      ids,
      [&](int64_t first, const float* l, int64_t rows) {
        firsts.push_back(first);
        got.insert(got.end(), l, l + rows * lm->vocab_size());
      },
      5);
  EXPECT_EQ(firsts, (std::vector<int64_t>{0, 5, 10, 15, 20}));
  EXPECT_LE(max_abs_diff(got, want), 1e-4 * max_abs(want));
  if (cuda::list_devices().empty()) {  // with a GPU, "cuda" works (tests/engine/backend/cuda)
    try {
      open_language_model(dir, {"cuda", 0});
      FAIL();
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUser);
      EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos);
    }
  }
}

// The fixture's config with one field changed, against the fixture's unchanged weights.
std::string load_error(const std::string& fixture, const std::string& key,
                       const nlohmann::json& value) {
  std::ifstream in(test::fixtures_dir() / fixture / "config.json");
  nlohmann::json cfg = nlohmann::json::parse(in);
  cfg[key] = value;
  const ModelConfig c = parse_model_config(cfg, "edited config.json");
  const io::Checkpoint ckpt = io::Checkpoint::open(test::fixtures_dir() / fixture);
  return refinery::test::error_message_of([&] { ModelWeights::load(ckpt, c); });
}

TEST(EngineWeights, MissingOrMisShapedTensorIsAUserErrorNamingIt) {
  const std::string missing = load_error("llama_gqa_llama3", "num_hidden_layers", 3);
  EXPECT_NE(missing.find("model.layers.2.input_layernorm.weight"), std::string::npos) << missing;
  EXPECT_NE(missing.find("missing"), std::string::npos) << missing;
  const std::string shape = load_error("llama_gqa_llama3", "intermediate_size", 90);
  EXPECT_NE(shape.find("model.layers.0.mlp.gate_proj.weight"), std::string::npos) << shape;
  EXPECT_NE(shape.find("expected shape [90, "), std::string::npos) << shape;
  EXPECT_NE(shape.find("found [88, "), std::string::npos) << shape;
}

TEST(EngineDemoModel, Bf16DeepseekV3LoadsAndRuns) {
  auto model = Transformer::load(
      std::filesystem::path(REFINERY_SOURCE_DIR) / "models" / "demo-tiny-deepseek-v3",
      backend::make_cpu_backend());
  EXPECT_EQ(model->config().num_mtp_layers, 1);  // stored MTP layer is not run
  const auto logits = values(model->forward(std::vector<int32_t>{1, 400, 31999, 5}));
  ASSERT_EQ(logits.size(), 4u * 32000u);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  EXPECT_GT(max_abs(logits), 0.0);
  GenerationOptions o;
  o.max_new_tokens = 5;
  EXPECT_EQ(generate(*model, std::vector<int32_t>{1, 400}, o).tokens.size(), 5u);
}

}  // namespace
}  // namespace refinery::model
