// Applying plans that prune heads, KV groups and hidden channels (src/prune/tensor_map.hpp): full
// counts reproduce the parent bit for bit through the slicing path, q/k/v/o and MLA kv_b_proj keep
// the right row and column blocks, quantized weights refuse, and the fused expert layout keeps the
// hidden channels. The logits of pruned models against transformers are ReferenceTest's cases
// (apply_test.cpp, tests/fixtures/prune/cases/*heads*, *hidden*).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_writer.hpp"
#include "engine/model/transformer.hpp"
#include "prune/apply.hpp"
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

// --heads / --kv-heads / --hidden equal to the model's counts: build_plan keeps everything, and a
// plan that names every head, KV head and hidden channel explicitly (each tensor goes through the
// slicing path with identity index lists) reproduces the parent's logits bit for bit.
class FullWidthTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FullWidthTest, FullCountsReproduceTheParent) {
  const fs::path parent = test::fixture(GetParam());
  const auto c = model::load_model_config(parent);
  const bool mla = c.attention.kind == model::AttentionKind::kMla;
  ImportanceReport r;
  r.embedding_channels.assign(static_cast<std::size_t>(c.hidden_size), 1.0);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerImportance li;
    li.layer = l;
    for (int h = 0; h < c.attention.num_heads; ++h) li.head_norm.push_back((h * 7) % 5);
    for (int g = 0; g < c.attention.num_kv_heads; ++g) li.kv_group_norm.push_back(g);
    r.layers.push_back(li);
  }
  PruneOptions o;
  o.heads = c.attention.num_heads;
  if (!mla) o.kv_heads = c.attention.num_kv_heads;
  o.hidden = c.hidden_size;
  const PrunePlan built = build_plan(c, &r, o);
  EXPECT_EQ(plan_to_json(built), plan_to_json(PrunePlan::identity(c)));

  PrunePlan explicit_plan = PrunePlan::identity(c);
  for (LayerPlan& l : explicit_plan.layers) {
    for (int h = 0; h < c.attention.num_heads; ++h) l.heads.push_back(h);
    if (!mla)
      for (int g = 0; g < c.attention.num_kv_heads; ++g) l.kv_heads.push_back(g);
  }
  for (int i = 0; i < c.hidden_size; ++i) explicit_plan.hidden_channels.push_back(i);
  ScratchDir scratch;
  const fs::path out = scratch.path() / "pruned";
  const ApplyResult res = apply_plan(parent, explicit_plan, out);
  EXPECT_EQ(res.parameters_after, res.parameters_before);
  const auto ids = test::random_tokens(11, c.vocab_size, 3);
  EXPECT_EQ(logits_of(out, ids), logits_of(parent, ids));  // bit for bit
  const nlohmann::json config = read_json(out / "config.json");
  EXPECT_EQ(config["num_attention_heads"], c.attention.num_heads);
  EXPECT_EQ(config["num_key_value_heads"], c.attention.num_kv_heads);
  EXPECT_EQ(config["hidden_size"], c.hidden_size);
  if (!mla) {
    EXPECT_EQ(config["head_dim"], c.attention.head_dim);
  }
}

INSTANTIATE_TEST_SUITE_P(PruneApply, FullWidthTest,
                         ::testing::Values("llama_gqa_llama3", "llama_tied_linear_bias", "mixtral_8e_top2",
                                           "qwen2_moe_shared", "qwen3_qknorm_tied", "deepseek_v2_lite",
                                           "deepseek_v3_noaux"),
                         [](const auto& info) { return info.param; });

// Head slicing at the byte level: q_proj keeps the kept heads' row blocks, o_proj their column
// blocks, k/v_proj the kept KV group's rows; the MLA kv_b_proj keeps per head its interleaved
// [qk_nope k rows; v rows] block.
TEST(PruneApply, HeadsSliceRowAndColumnBlocks) {
  ScratchDir scratch;
  {
    const fs::path parent = test::fixture("mixtral_8e_top2");  // 6 heads x 8, 2 KV groups, hidden 48
    const auto c = model::load_model_config(parent);
    PrunePlan plan = PrunePlan::identity(c);
    for (LayerPlan& l : plan.layers) {
      l.kv_heads = {1};
      l.heads = {3, 5};
    }
    const fs::path out = scratch.path() / "mixtral";
    apply_plan(parent, plan, out);
    const io::Checkpoint a = io::Checkpoint::open(parent), b = io::Checkpoint::open(out);
    const std::string q = "model.layers.0.self_attn.q_proj.weight", o = "model.layers.0.self_attn.o_proj.weight",
                      k = "model.layers.0.self_attn.k_proj.weight";
    const std::size_t elem = a.bytes(q).size() / (48 * 48);
    const std::size_t row = 48 * elem, head = 8 * row;
    ASSERT_EQ(b.at(q).entry->shape, (std::vector<int64_t>{16, 48}));
    EXPECT_EQ(std::memcmp(b.bytes(q).data(), a.bytes(q).data() + 3 * head, head), 0);
    EXPECT_EQ(std::memcmp(b.bytes(q).data() + head, a.bytes(q).data() + 5 * head, head), 0);
    ASSERT_EQ(b.at(k).entry->shape, (std::vector<int64_t>{8, 48}));
    EXPECT_EQ(std::memcmp(b.bytes(k).data(), a.bytes(k).data() + head, head), 0);
    ASSERT_EQ(b.at(o).entry->shape, (std::vector<int64_t>{48, 16}));
    for (int r = 0; r < 48; ++r) {  // row r: columns 24..31 then 40..47 of the parent's row
      const std::byte* src = a.bytes(o).data() + static_cast<std::size_t>(r) * row;
      const std::byte* dst = b.bytes(o).data() + static_cast<std::size_t>(r) * 16 * elem;
      EXPECT_EQ(std::memcmp(dst, src + 24 * elem, 8 * elem), 0) << r;
      EXPECT_EQ(std::memcmp(dst + 8 * elem, src + 40 * elem, 8 * elem), 0) << r;
    }
    const nlohmann::json config = read_json(out / "config.json");
    EXPECT_EQ(config["num_attention_heads"], 2);
    EXPECT_EQ(config["num_key_value_heads"], 1);
    EXPECT_EQ(config["head_dim"], 8);
  }
  {
    const fs::path parent = test::fixture("deepseek_v2_lite");  // 4 heads, qk_nope 16, v 12, kv_lora 32
    const auto c = model::load_model_config(parent);
    PrunePlan plan = PrunePlan::identity(c);
    for (LayerPlan& l : plan.layers) l.heads = {2};
    const fs::path out = scratch.path() / "v2";
    apply_plan(parent, plan, out);
    const io::Checkpoint a = io::Checkpoint::open(parent), b = io::Checkpoint::open(out);
    const std::string kvb = "model.layers.1.self_attn.kv_b_proj.weight";
    ASSERT_EQ(a.at(kvb).entry->shape, (std::vector<int64_t>{4 * 28, 32}));
    ASSERT_EQ(b.at(kvb).entry->shape, (std::vector<int64_t>{28, 32}));
    const std::size_t block = a.bytes(kvb).size() / 4;
    EXPECT_EQ(std::memcmp(b.bytes(kvb).data(), a.bytes(kvb).data() + 2 * block, block), 0);
    EXPECT_EQ(b.at("model.layers.1.self_attn.q_proj.weight").entry->shape, (std::vector<int64_t>{24, 64}));
    EXPECT_EQ(b.at("model.layers.1.self_attn.o_proj.weight").entry->shape, (std::vector<int64_t>{64, 12}));
    EXPECT_EQ(read_json(out / "config.json")["num_key_value_heads"], 1);
  }
}

// FP8 block-quantized projections cannot be sliced by heads or hidden channels.
TEST(PruneApply, WidthOfQuantizedWeightsIsAUserError) {
  const fs::path parent = test::fixture("deepseek_v3_fp8");
  const auto c = model::load_model_config(parent);
  ScratchDir scratch;
  PrunePlan heads = PrunePlan::identity(c);
  for (LayerPlan& l : heads.layers) l.heads = {0, 1};
  std::string msg = error_message_of([&] { apply_plan(parent, heads, scratch.path() / "h"); });
  EXPECT_NE(msg.find("quantized"), std::string::npos) << msg;
  PrunePlan hidden = PrunePlan::identity(c);
  for (int i = 0; i < 100; ++i) hidden.hidden_channels.push_back(i);
  msg = error_message_of([&] { apply_plan(parent, hidden, scratch.path() / "d"); });
  EXPECT_NE(msg.find("quantized"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(scratch.path() / "h"));
  EXPECT_FALSE(fs::exists(scratch.path() / "d"));
}

// The transformers 5 fused expert layout (gate_up_proj [E, 2I, H], down_proj [E, H, I]) under
// --hidden with kept experts and channels: a synthetic checkpoint, values checked by index.
TEST(PruneApply, FusedExpertsKeepHiddenChannels) {
  const auto c = model::load_model_config(test::fixture("qwen3_moe_normtopk"));  // 4 layers
  ScratchDir scratch;
  // gate_up [2, 4, 3] (I = 2, H = 3) and down [2, 3, 2], element value = its flat index.
  std::vector<float> gate_up(24), down(12);
  for (std::size_t i = 0; i < gate_up.size(); ++i) gate_up[i] = static_cast<float>(i);
  for (std::size_t i = 0; i < down.size(); ++i) down[i] = static_cast<float>(i);
  auto bytes = [](const std::vector<float>& v) {
    return std::span<const std::byte>(reinterpret_cast<const std::byte*>(v.data()), v.size() * sizeof(float));
  };
  std::vector<io::TensorToWrite> tensors(2);
  tensors[0].name = "model.layers.1.mlp.experts.gate_up_proj";
  tensors[0].shape = {2, 4, 3};
  tensors[0].data = bytes(gate_up);
  tensors[1].name = "model.layers.1.mlp.experts.down_proj";
  tensors[1].shape = {2, 3, 2};
  tensors[1].data = bytes(down);
  io::write_checkpoint(scratch.path(), tensors);
  const io::Checkpoint ck = io::Checkpoint::open(scratch.path());
  PrunePlan plan = PrunePlan::identity(c);
  plan.layers[1].experts = {1};
  plan.layers[1].expert_channels = {{1}};
  plan.hidden_channels = {0, 2};
  const TensorMap map = map_tensors(ck, c, plan);
  ASSERT_EQ(map.actions.size(), 2u);
  for (const TensorAction& a : map.actions) {
    std::vector<float> out(static_cast<std::size_t>(a.shape[0] * a.shape[1] * a.shape[2]), -1.0f);
    const std::vector<int64_t> shape = ck.at(a.source).entry->shape;
    std::size_t off = 0;
    for (const TensorPiece& p : a.pieces)
      off += gather_piece(ck.bytes(a.source).data(), shape, sizeof(float), p,
                          reinterpret_cast<std::byte*>(out.data()) + off);
    EXPECT_EQ(off, out.size() * sizeof(float));
    if (a.target.find("gate_up") != std::string::npos) {
      // expert 1 (offset 12), rows {1, 2 + 1} (gate and up of channel 1), columns {0, 2}
      EXPECT_EQ(a.shape, (std::vector<int64_t>{1, 2, 2}));
      EXPECT_EQ(out, (std::vector<float>{12 + 3, 12 + 5, 12 + 9, 12 + 11}));
    } else {
      // expert 1 (offset 6), rows {0, 2} (hidden), column 1 (channel)
      EXPECT_EQ(a.shape, (std::vector<int64_t>{1, 2, 1}));
      EXPECT_EQ(out, (std::vector<float>{6 + 1, 6 + 5}));
    }
  }
}

}  // namespace
}  // namespace refinery::prune
