// The forward folds each residual add into the RMSNorm after it (Backend::add_rms_norm). On the
// CPU that must change no number: every layer's tapped output equals the unfused chain
//   x += attention(input_layernorm(x)); x += mlp(post_attention_layernorm(x))
// composed from the public pieces (rms_norm, attention_block, add, mlp_block) bit for bit; the
// final hidden equals rms_norm(x, norm); the taps layers.N.output and layers.N+1.input agree; and
// layer_forward (the calibration path, which ends in a plain add) reproduces each layer.
#include <cstring>

#include "model_test_util.hpp"

namespace refinery::model {
namespace {

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

class FusedNormTest : public ::testing::TestWithParam<const char*> {};

TEST_P(FusedNormTest, ForwardEqualsTheUnfusedChainBitForBit) {
  auto model = test::load_fixture(GetParam());
  backend::Backend& be = model->backend();
  const ModelConfig& c = model->config();
  const ModelWeights& w = model->weights();
  const float eps = static_cast<float>(c.rms_norm_eps);
  const std::vector<int32_t> ids = {5, 17, 3, 99, 42, 7, 1};
  const int64_t t = static_cast<int64_t>(ids.size()), hidden = c.hidden_size;

  test::Recorder rec;
  rec.filter = [](std::string_view n) {  // norm.output and layers.N.input / layers.N.output
    if (n == "norm.output") return true;
    if (n.substr(0, 7) != "layers.") return false;
    const std::string_view rest = n.substr(7);
    const std::size_t dot = rest.find('.');
    return dot != std::string_view::npos &&
           (rest.substr(dot) == ".input" || rest.substr(dot) == ".output");
  };
  KvCache cache = model->make_cache(t);
  const Tensor hidden_out = model->forward_hidden(ids, cache, &rec).clone();

  Tensor x = Tensor::empty(DType::kF32, {t, hidden});
  be.embedding(Tensor::copy_of(DType::kI32, {t}, ids.data()), w.embed_tokens, x);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string name = "layers." + std::to_string(l);
    ASSERT_TRUE(rec.seen.count(name + ".input") && rec.seen.count(name + ".output")) << name;
    EXPECT_TRUE(same_bits(rec.seen.at(name + ".input"), x)) << name << ".input";
    // Calibration path: one layer from its input.
    KvCache layer_cache = model->make_cache(t);
    const Tensor calibrated = model->layer_forward(l, x, 1, layer_cache);
    // The unfused chain.
    const LayerWeights& lw = w.layers[static_cast<std::size_t>(l)];
    Tensor h = Tensor::empty(DType::kF32, {t, hidden});
    be.rms_norm(x, lw.input_layernorm, eps, h);
    KvCache block_cache = model->make_cache(t);
    const Tensor a = model->attention_block(l, h, 1, block_cache);
    be.add(x, a, x);
    be.rms_norm(x, lw.post_attention_layernorm, eps, h);
    const Tensor m = model->mlp_block(l, h);
    be.add(x, m, x);
    EXPECT_TRUE(same_bits(rec.seen.at(name + ".output"), x)) << name << ".output";
    EXPECT_TRUE(same_bits(calibrated, x)) << name << " layer_forward";
  }
  Tensor normed = Tensor::empty(DType::kF32, {t, hidden});
  be.rms_norm(x, w.norm, eps, normed);
  EXPECT_TRUE(same_bits(hidden_out, normed)) << "final hidden";
  EXPECT_TRUE(same_bits(rec.seen.at("norm.output"), normed)) << "norm.output";
}

// Dense GQA, MoE with a shared expert and dense-only layers, MLA with MoE.
INSTANTIATE_TEST_SUITE_P(EngineFusedNorm, FusedNormTest,
                         ::testing::Values("llama_gqa_llama3", "qwen2_moe_shared",
                                           "deepseek_v2_lite"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace refinery::model
