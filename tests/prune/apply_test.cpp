// Applying prune plans (src/prune/apply.hpp): keeping everything reproduces the parent exactly;
// pruned directories give the logits transformers computes on the same directories
// (tests/fixtures/prune/cases/*, made by tests/fixtures/prune/make_prune_reference.py, which also
// asserts that transformers loads every weight with no missing or unexpected key); tensor
// renumbering, quantized weights, and the output directory rules. Heads and hidden channels:
// apply_width_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>

#include "engine/io/checkpoint.hpp"
#include "engine/model/transformer.hpp"
#include "prune/apply.hpp"
#include "prune/pruned_config.hpp"
#include "prune/tensor_map.hpp"
#include "prune_test_util.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::prune {
namespace {

namespace fs = std::filesystem;
using ::refinery::test::error_message_of;
using ::refinery::test::ScratchDir;

using test::read_json;

using test::logits_of;

class IdentityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(IdentityTest, KeepingEverythingReproducesTheParent) {
  const fs::path parent = GetParam() == "demo" ? test::demo_model() : test::fixture(GetParam());
  ScratchDir scratch;
  const fs::path out = scratch.path() / "pruned";
  const auto config = model::load_model_config(parent);
  const ApplyResult r = apply_plan(parent, PrunePlan::identity(config), out);
  EXPECT_EQ(r.parameters_after, r.parameters_before);
  const auto ids = test::random_tokens(9, config.vocab_size, 4);
  EXPECT_EQ(logits_of(out, ids), logits_of(parent, ids));  // bit for bit
  nlohmann::json want = read_json(parent / "config.json");
  if (want.contains("num_nextn_predict_layers")) want["num_nextn_predict_layers"] = 0;
  EXPECT_EQ(read_json(out / "config.json"), want);
  const nlohmann::json prov = read_json(out / "refinery.json");
  EXPECT_EQ(prov["pass"], "prune");
  EXPECT_EQ(prov["parameters_after"], r.parameters_after);
  // Every parent tensor is there with the same bytes.
  const io::Checkpoint a = io::Checkpoint::open(parent), b = io::Checkpoint::open(out);
  ASSERT_EQ(a.names(), b.names());
  for (const std::string& n : a.names()) {
    const auto x = a.bytes(n), y = b.bytes(n);
    ASSERT_EQ(x.size(), y.size()) << n;
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size()), 0) << n;
  }
  if (fs::exists(parent / "tokenizer.json")) {
    EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  }
}

INSTANTIATE_TEST_SUITE_P(PruneApply, IdentityTest,
                         ::testing::Values("demo", "llama_gqa_llama3", "llama_tied_linear_bias", "mixtral_8e_top2",
                                           "qwen2_moe_shared", "qwen3_moe_normtopk", "deepseek_v2_lite",
                                           "deepseek_v3_noaux", "deepseek_v3_fp8", "qwen3_qknorm_tied"),
                         [](const auto& info) { return info.param; });

std::vector<std::string> reference_cases() {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(test::prune_fixtures() / "cases")) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

class ReferenceTest : public ::testing::TestWithParam<std::string> {};

// Our engine on our pruned directory vs transformers on the same directory: max|Δ| <= 1e-4 x max|logit|
// (the bound of the engine's own fixture test).
TEST_P(ReferenceTest, LogitsMatchTransformersOnThePrunedDirectory) {
  const fs::path dir = test::prune_fixtures() / "cases" / GetParam();
  const nlohmann::json ref = read_json(dir / "reference.json");
  const fs::path parent = test::source_dir() / ref["parent"].get<std::string>();
  const PrunePlan plan = plan_from_json(read_json(dir / "plan.json"), (dir / "plan.json").string());
  ScratchDir scratch;
  const fs::path out = scratch.path() / "pruned";
  const ApplyResult r = apply_plan(parent, plan, out);
  EXPECT_LT(r.parameters_after, r.parameters_before);
  EXPECT_EQ(r.parameters_after, ref["parameters"].get<int64_t>());
  const nlohmann::json config = read_json(out / "config.json");
  for (const auto& [key, value] : ref["config"].items()) EXPECT_EQ(config[key], value) << key;
  const test::ReferenceFile logits(dir / "reference_logits.safetensors");
  int sequences = 0;
  for (int i = 0; logits.has("input_ids_" + std::to_string(i)); ++i, ++sequences) {
    const auto ids = logits.ids("input_ids_" + std::to_string(i));
    const auto want = logits.floats("logits_" + std::to_string(i));
    const auto got = logits_of(out, ids);
    ASSERT_EQ(got.size(), want.size());
    double scale = 0, err = 0;
    for (std::size_t k = 0; k < want.size(); ++k) {
      scale = std::max(scale, double(std::abs(want[k])));
      err = std::max(err, double(std::abs(got[k] - want[k])));
    }
    EXPECT_LE(err, 1e-4 * scale) << GetParam() << " sequence " << i;
  }
  EXPECT_EQ(sequences, 2);
}

INSTANTIATE_TEST_SUITE_P(PruneApply, ReferenceTest, ::testing::ValuesIn(reference_cases()),
                         [](const auto& info) { return info.param; });

// Dropped experts vanish, kept ones are renumbered with their FP8 blocks and scales, and the router
// rows and score-correction bias follow.
TEST(PruneApply, ExpertsRenumberedWithFp8ScalesAndRouterRows) {
  const fs::path parent = test::fixture("deepseek_v3_fp8");  // 8 experts, 2 groups, top-2
  const auto config = model::load_model_config(parent);
  PrunePlan plan = PrunePlan::identity(config);
  plan.layers[1].experts = {1, 2, 4, 7};
  ScratchDir scratch;
  const fs::path out = scratch.path() / "pruned";
  apply_plan(parent, plan, out);
  EXPECT_EQ(read_json(out / "config.json")["n_routed_experts"], 4);
  const io::Checkpoint a = io::Checkpoint::open(parent), b = io::Checkpoint::open(out);
  auto same = [&](const std::string& x, const std::string& y) {
    const auto p = a.bytes(x), q = b.bytes(y);
    return p.size() == q.size() && std::memcmp(p.data(), q.data(), p.size()) == 0;
  };
  const std::string pa = "model.layers.1.mlp.";
  for (int k = 0; k < 4; ++k)
    for (const char* t : {"gate_proj.weight", "gate_proj.weight_scale_inv", "down_proj.weight", "up_proj.weight_scale_inv"})
      EXPECT_TRUE(same(pa + "experts." + std::to_string(plan.layers[1].experts[k]) + "." + t,
                       pa + "experts." + std::to_string(k) + "." + t)) << k << " " << t;
  EXPECT_FALSE(b.find(pa + "experts.4.gate_proj.weight"));
  const std::size_t row = a.bytes(pa + "gate.weight").size() / 8;
  const std::string bias = pa + "gate.e_score_correction_bias";
  ASSERT_EQ(b.at(bias).entry->shape, (std::vector<int64_t>{4}));
  const std::size_t elem = a.bytes(bias).size() / 8;
  for (int k = 0; k < 4; ++k) {
    const auto e = static_cast<std::size_t>(plan.layers[1].experts[static_cast<std::size_t>(k)]);
    EXPECT_EQ(std::memcmp(b.bytes(pa + "gate.weight").data() + k * row, a.bytes(pa + "gate.weight").data() + e * row,
                          row), 0);
    EXPECT_EQ(std::memcmp(b.bytes(bias).data() + k * elem, a.bytes(bias).data() + e * elem, elem), 0);
  }
  // The pruned model runs.
  EXPECT_EQ(logits_of(out, {1, 2, 3}).size(), static_cast<std::size_t>(3 * config.vocab_size));
  // MLP channels of FP8 weights cannot be sliced.
  PrunePlan ffn = PrunePlan::identity(config);
  ffn.layers[0].mlp_channels = {0, 1, 2};
  const std::string msg = error_message_of([&] { apply_plan(parent, ffn, scratch.path() / "ffn"); });
  EXPECT_NE(msg.find("quantized"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(scratch.path() / "ffn"));
}

TEST(PruneApply, OutputDirectoryRules) {
  const fs::path parent = test::fixture("llama_gqa_llama3");
  const auto config = model::load_model_config(parent);
  ScratchDir scratch;
  const fs::path out = scratch.path() / "out";
  fs::create_directories(out);
  std::ofstream(out / "keep.txt") << "mine";
  PrunePlan plan = PrunePlan::identity(config);
  plan.layers.erase(plan.layers.begin());
  std::string msg = error_message_of([&] { apply_plan(parent, plan, out); });
  EXPECT_NE(msg.find("--force"), std::string::npos) << msg;
  EXPECT_TRUE(fs::exists(out / "keep.txt"));  // untouched
  ApplyOptions force;
  force.force = true;
  apply_plan(parent, plan, out, force);
  EXPECT_FALSE(fs::exists(out / "keep.txt"));
  EXPECT_EQ(read_json(out / "config.json")["num_hidden_layers"], 1);
  msg = error_message_of([&] { apply_plan(parent, plan, parent, force); });
  EXPECT_NE(msg.find("is the input model"), std::string::npos) << msg;
  // No temporary directory is left next to the output.
  for (const auto& e : fs::directory_iterator(scratch.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

// A kept layer sequence deepseek's first_k_dense_replace cannot describe (MoE before dense).
TEST(PruneApply, DeepseekLayerPatternMustStayExpressible) {
  const fs::path parent = test::fixture("deepseek_v3_noaux");  // D M M
  const auto config = model::load_model_config(parent);
  PrunePlan plan;
  plan.layers = {LayerPlan{1, {}, {}, {}, {}, {}, {}}, LayerPlan{2, {}, {}, {}, {}, {}, {}}};  // M M: fine, first_k 0
  ScratchDir scratch;
  apply_plan(parent, plan, scratch.path() / "a");
  EXPECT_EQ(read_json(scratch.path() / "a" / "config.json")["first_k_dense_replace"], 0);
  const fs::path qwen = test::fixture("qwen3_moe_normtopk");  // D M D M
  const auto qc = model::load_model_config(qwen);
  PrunePlan q;
  q.layers = {LayerPlan{1, {}, {}, {}, {}, {}, {}}, LayerPlan{2, {}, {}, {}, {}, {}, {}}};  // M D
  apply_plan(qwen, q, scratch.path() / "b");
  const nlohmann::json j = read_json(scratch.path() / "b" / "config.json");
  EXPECT_EQ(j["mlp_only_layers"], nlohmann::json::array({1}));
  EXPECT_EQ(j["decoder_sparse_step"], 1);
  const auto pruned = model::load_model_config(scratch.path() / "b");
  EXPECT_TRUE(pruned.layer_is_moe(0));
  EXPECT_FALSE(pruned.layer_is_moe(1));
  (void)qc;
  (void)config;
  // deepseek with moe_layer_freq 2 (M D M): keeping layers 1, 2 gives D M, which no
  // first_k_dense_replace with freq 2 describes.
  nlohmann::json v2 = read_json(test::fixture("deepseek_v2_lite") / "config.json");
  v2["first_k_dense_replace"] = 0;
  v2["moe_layer_freq"] = 2;
  const auto v2c = model::parse_model_config(v2, "v2");
  PrunePlan dm;
  dm.layers = {LayerPlan{1, {}, {}, {}, {}, {}, {}}, LayerPlan{2, {}, {}, {}, {}, {}, {}}};
  const std::string msg = error_message_of([&] { pruned_config(v2, v2c, dm); });
  EXPECT_NE(msg.find("DM"), std::string::npos) << msg;
}

}  // namespace
}  // namespace refinery::prune

namespace refinery::prune {
namespace {

// The byte gather under every slice: a [3, 4, 2] u16 tensor, whole, by index lists, and by blocks
// of dimension 0 with per-block selections (the fused-expert layout [E, 2I, H]).
TEST(PruneApply, GatherPieces) {
  std::vector<uint16_t> src(24);
  for (std::size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint16_t>(i);
  const auto* bytes = reinterpret_cast<const std::byte*>(src.data());
  const std::vector<int64_t> shape = {3, 4, 2};
  std::vector<uint16_t> dst(24, 999);
  auto* out = reinterpret_cast<std::byte*>(dst.data());
  EXPECT_EQ(gather_piece(bytes, shape, 2, TensorPiece{-1, {}}, out), 48u);
  EXPECT_EQ(dst, src);
  // rows {0, 2} of dim 0, columns {1} of dim 2: elements (0,j,1), (2,j,1)
  dst.assign(24, 999);
  EXPECT_EQ(gather_piece(bytes, shape, 2, TensorPiece{-1, {{0, 2}, {}, {1}}}, out), 16u);
  EXPECT_EQ(std::vector<uint16_t>(dst.begin(), dst.begin() + 8), (std::vector<uint16_t>{1, 3, 5, 7, 17, 19, 21, 23}));
  // block 1 (a [4, 2] matrix 8..15), rows {3, 0}
  dst.assign(24, 999);
  EXPECT_EQ(gather_piece(bytes, shape, 2, TensorPiece{1, {{3, 0}, {}}}, out), 8u);
  EXPECT_EQ(std::vector<uint16_t>(dst.begin(), dst.begin() + 4), (std::vector<uint16_t>{14, 15, 8, 9}));
  EXPECT_EQ(dst[4], 999);
}

}  // namespace
}  // namespace refinery::prune
