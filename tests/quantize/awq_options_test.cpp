// AWQ options beyond AutoAWQ (AwqOptions in src/quantize/awq.hpp), on the trained MoE teacher
// (MLA, dense first layer): MLA's o_proj group folds 1/s into exactly kv_b_proj's value rows; the
// asymmetric clip clamps each group's two ends; sequential calibration feeds layer 1 the output
// of the quantized layer 0 (checked against an independent recomputation from the written file).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"
#include "engine/eval/token_stream.hpp"
#include "engine/model/transformer.hpp"
#include "quantize/awq.hpp"
#include "quantize/awq_groups.hpp"
#include "quantize/awq_layer.hpp"
#include "quantize/group_quant.hpp"
#include "quantize/quantized_model_writer.hpp"
#include "tests/quantize/awq_test_util.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::quantize {
namespace {

using awq_test_util::cpu;
using awq_test_util::kLength;
using awq_test_util::kTeacher;
using awq_test_util::sample_windows;

Tensor f32_weight(const backend::LinearWeight& w) {
  return std::get<backend::DenseWeight>(w.storage).weight.to_f32();
}

// The residual rows into layer 0 for `tokens` (f32 [T, hidden]).
Tensor embed(model::Transformer& m, const std::vector<int32_t>& tokens) {
  backend::Backend& be = m.backend();
  const auto n = static_cast<int64_t>(tokens.size());
  Tensor x = be.empty(DType::kF32, {n, m.config().hidden_size});
  be.embedding(Tensor::copy_of(DType::kI32, {n}, tokens.data()), m.weights().embed_tokens, x);
  return x;
}

double sum_sq_diff(const Tensor& a, const Tensor& b) {
  double s = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double d = double(a.data<float>()[i]) - double(b.data<float>()[i]);
    s += d * d;
  }
  return s;
}

TEST(AwqGroups, MlaOGroupFoldsIntoKvbValueRows) {
  auto model = model::Transformer::load(kTeacher, cpu());
  const auto plain = scale_groups(model->config(), model->weights(), 1);
  const auto with_o = scale_groups(model->config(), model->weights(), 1, GroupOptions{true, false});
  ASSERT_EQ(with_o.size(), plain.size() + 1);
  const ScaleGroup& o = with_o[3];
  EXPECT_EQ(o.linears, std::vector<std::string>{"model.layers.1.self_attn.o_proj"});
  EXPECT_EQ(o.prev_linear, "model.layers.1.self_attn.kv_b_proj");
  // 4 heads, k_nope 48 + v 64 rows each: o's channel h·64 + d is kv_b's row h·112 + 48 + d.
  ASSERT_EQ(o.prev_rows.size(), 256u);
  EXPECT_EQ(o.prev_rows[0], 48);
  EXPECT_EQ(o.prev_rows[63], 111);
  EXPECT_EQ(o.prev_rows[64], 160);
  EXPECT_EQ(o.prev_rows[255], 3 * 112 + 48 + 63);

  // The fold is exact: kv_b's rows / s and o's columns · s leave the attention output unchanged.
  backend::Backend& be = model->backend();
  const std::vector<int32_t> tokens = sample_windows(0, 1);
  Tensor h = embed(*model, tokens);
  model::KvCache cache = model->make_cache(kLength);
  const Tensor before = model->attention_block(1, h, 1, cache);
  model::AttentionWeights& a = model->mutable_weights().layers[1].attention;
  Tensor kvb = f32_weight(a.kv_b_proj), op = f32_weight(a.o_proj);
  const int64_t kvb_in = kvb.size(1), o_in = op.size(1);
  for (int64_t k = 0; k < o_in; ++k) {
    const float s = 0.5f + 1.5f * static_cast<float>((k * 37) % 101) / 100.0f;
    for (int64_t j = 0; j < kvb_in; ++j) kvb.mutable_data<float>()[o.prev_rows[k] * kvb_in + j] /= s;
    for (int64_t r = 0; r < op.size(0); ++r) op.mutable_data<float>()[r * o_in + k] *= s;
  }
  a.kv_b_proj.storage = backend::DenseWeight{kvb};
  a.o_proj.storage = backend::DenseWeight{op};
  const Tensor after = model->attention_block(1, h, 1, cache);
  const double rel = sum_sq_diff(before, after) / sum_sq_diff(before, Tensor::zeros(DType::kF32, before.shape()));
  EXPECT_LT(rel, 1e-10);
  (void)be;
}

TEST(AwqGroups, BlockLossScoresSingleLinearGroupsByTheirBlock) {
  auto model = model::Transformer::load(kTeacher, cpu());
  const auto plain = scale_groups(model->config(), model->weights(), 0);
  const auto block = scale_groups(model->config(), model->weights(), 0, GroupOptions{true, true});
  ASSERT_EQ(block.size(), plain.size() + 1);  // + o
  const std::string attn_in = "layers.0.self_attn.q_a_proj.input";
  for (const auto& g : block) {
    SCOPED_TRACE(g.name);
    if (g.name == "layers.0.mlp.down") {
      EXPECT_EQ(g.inspect, Inspect::kMlp);
      EXPECT_EQ(g.inspect_tap, "layers.0.mlp.gate_proj.input");
    } else if (g.name == "layers.0.mlp.gate_up" || g.name == "layers.0.self_attn.qkv_a") {
      EXPECT_TRUE(g.inspect_tap.empty());  // already block-level
    } else {  // q_b, kv_b, o: the attention block on the input norm's output
      EXPECT_EQ(g.inspect, Inspect::kAttention);
      EXPECT_EQ(g.inspect_tap, attn_in);
    }
  }
  for (const auto& g : plain) EXPECT_TRUE(g.inspect_tap.empty()) << g.name;
  // MoE layer: the shared expert's down is scored by the MoE block, routed experts' downs not
  // (one MoE block forward per expert and candidate would be too slow).
  for (const auto& g : scale_groups(model->config(), model->weights(), 1, GroupOptions{false, true}))
    if (g.expert_down) EXPECT_EQ(g.inspect, Inspect::kLinears) << g.name;
    else if (g.name == "layers.1.mlp.shared.down") EXPECT_EQ(g.inspect, Inspect::kMlp);
}

TEST(AwqClip, AsymmetricClampShrinksBothEndsOfEachGroup) {
  // Two rows of two groups of 4.
  const std::vector<float> w = {-1.0f, 0.2f, 0.5f, 2.0f,   0.1f, 0.4f, 0.7f, 1.0f,
                                -3.0f, -2.0f, -1.0f, -0.5f, -0.4f, 0.0f, 0.4f, 0.8f};
  std::vector<float> out(w.size());
  awq_detail::clamp_groups(w, out, 2, 8, 4, 0.5f);
  const std::vector<float> expect = {-0.5f, 0.2f, 0.5f, 1.0f,   0.1f, 0.4f, 0.5f, 0.5f,
                                     -1.5f, -1.5f, -1.0f, -0.5f, -0.2f, 0.0f, 0.4f, 0.4f};
  EXPECT_EQ(out, expect);
  // Per-group ratios, in place.
  std::vector<float> inplace = w;
  const std::vector<float> ratios = {1.0f, 0.5f, 1.0f, 0.5f};
  awq_detail::clamp_groups(inplace, inplace, 2, 8, 4, ratios);
  for (int j = 0; j < 4; ++j) EXPECT_EQ(inplace[j], w[j]);
  EXPECT_EQ(inplace[7], 0.5f);
  EXPECT_EQ(inplace[15], 0.4f);
}

// The report's RTN loss of layer 1's q_a/kv_a group (attention block MSE with those two linears
// round-to-nearest quantized) recomputed from a given residual input into layer 1.
double qkv_a_rtn_loss(model::Transformer& dense, const Tensor& x1, int64_t sequences,
                      const GroupQuantSpec& spec) {
  backend::Backend& be = dense.backend();
  Tensor h = be.empty(DType::kF32, x1.shape());
  model::LayerWeights& lw = dense.mutable_weights().layers[1];
  be.rms_norm(x1, lw.input_layernorm, static_cast<float>(dense.config().rms_norm_eps), h);
  model::KvCache cache = dense.make_cache(x1.size(0));
  const Tensor ref = dense.attention_block(1, h, sequences, cache);
  const auto keep_q = lw.attention.q_a_proj.storage, keep_kv = lw.attention.kv_a_proj_with_mqa.storage;
  for (backend::LinearWeight* w : {&lw.attention.q_a_proj, &lw.attention.kv_a_proj_with_mqa}) {
    Tensor f = f32_weight(*w);
    fake_quantize(f.mutable_data<float>(), f.size(0), f.size(1), spec);
    w->storage = backend::DenseWeight{f};
  }
  const Tensor out = dense.attention_block(1, h, sequences, cache);
  lw.attention.q_a_proj.storage = keep_q;
  lw.attention.kv_a_proj_with_mqa.storage = keep_kv;
  return sum_sq_diff(out, ref) / static_cast<double>(out.numel());
}

TEST(AwqSequential, LayerOneIsCalibratedOnTheQuantizedLayerZero) {
  const std::vector<int32_t> tokens = sample_windows(0, 2);
  GroupQuantSpec spec;
  spec.bits = 3;
  spec.group_size = 64;
  auto run = [&](bool sequential, const std::string& dir) {
    auto model = model::Transformer::load(kTeacher, cpu());
    AwqOptions options;
    options.spec = spec;
    options.sequential = sequential;
    options.clip = false;  // not needed for the check; saves time
    options.grid = 2;
    const AwqResult r = quantize_awq(*model, tokens, 2, options);
    write_quantized_model(kTeacher, dir, r.parts, spec, {{"pass", "test"}});
    for (const auto& g : r.groups)
      if (g.name == "layers.1.self_attn.qkv_a") return g.loss_rtn;
    ADD_FAILURE() << "no group layers.1.self_attn.qkv_a";
    return -1.0;
  };
  test::ScratchDir dir;
  const double loss_seq = run(true, dir.file("seq"));
  const double loss_fp = run(false, dir.file("fp"));

  auto dense = model::Transformer::load(kTeacher, cpu());
  auto quant = model::Transformer::load(dir.file("seq"), cpu());
  const Tensor x0 = embed(*dense, tokens);
  model::KvCache c1 = dense->make_cache(x0.size(0)), c2 = quant->make_cache(x0.size(0));
  const Tensor x1_fp = dense->layer_forward(0, x0, 2, c1);
  const Tensor x1_q = quant->layer_forward(0, x0, 2, c2);  // the written file's layer 0
  const double want_seq = qkv_a_rtn_loss(*dense, x1_q, 2, spec);
  const double want_fp = qkv_a_rtn_loss(*dense, x1_fp, 2, spec);
  RecordProperty("loss_seq", std::to_string(loss_seq));
  RecordProperty("loss_fp", std::to_string(loss_fp));
  EXPECT_NEAR(loss_seq, want_seq, 1e-3 * want_seq);
  EXPECT_NEAR(loss_fp, want_fp, 1e-3 * want_fp);
  // The two inputs differ enough for the check to tell them apart.
  EXPECT_GT(std::fabs(want_seq - want_fp), 1e-2 * want_fp);
}

// clip_qk and routed_clip change exactly the linears they are about: q_a/q_b get a clip search
// (their weights change), an expert's gate/up are clipped on its routed rows (they change), the
// shared expert (never routed) and kv_a (always clipped) stay the same.
TEST(AwqClip, QkAndRoutedClipTouchOnlyTheirLinears) {
  const std::vector<int32_t> tokens = sample_windows(0, 4);
  auto run = [&](bool on) {
    auto model = model::Transformer::load(kTeacher, cpu());
    AwqOptions options;
    options.spec.bits = 3;
    options.spec.group_size = 64;
    options.grid = 2;  // the scale search is not under test
    options.clip_qk = on;
    options.routed_clip = on;
    options.sequential = false;  // layer 1 reads the same input in both runs
    options.clip_min_routed = 8;
    return quantize_awq(*model, tokens, 4, options);
  };
  const AwqResult off = run(false), on = run(true);
  auto bytes_equal = [](const Tensor& a, const Tensor& b) {
    return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
  };
  auto same = [&](const std::string& p) {
    const backend::AwqWeight &a = off.parts.quantized.at(p), &b = on.parts.quantized.at(p);
    return bytes_equal(a.qweight, b.qweight) && bytes_equal(a.scales, b.scales) &&
           bytes_equal(a.qzeros, b.qzeros);
  };
  EXPECT_FALSE(same("model.layers.0.self_attn.q_a_proj"));
  EXPECT_FALSE(same("model.layers.1.self_attn.q_b_proj"));
  EXPECT_TRUE(same("model.layers.0.self_attn.kv_a_proj_with_mqa"));
  EXPECT_TRUE(same("model.layers.0.mlp.gate_proj"));
  EXPECT_TRUE(same("model.layers.1.mlp.shared_experts.gate_proj"));
  int changed = 0;
  for (int e = 0; e < 16; ++e)
    changed += !same("model.layers.1.mlp.experts." + std::to_string(e) + ".gate_proj");
  EXPECT_GE(changed, 8);
}

}  // namespace
}  // namespace refinery::quantize
