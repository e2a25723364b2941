// Importance pass (src/prune/importance.hpp): hand-checkable invariants, and two independent checks:
// layer scores from transformers' hidden states (the fixtures' hidden_states_2, made by
// tests/fixtures/make_model_fixtures.py) and gate-weighted expert output norms recomputed here from
// the checkpoint's f32 expert weights in double.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "engine/io/checkpoint.hpp"
#include "engine/model/transformer.hpp"
#include "prune/importance.hpp"
#include "prune_test_util.hpp"

namespace refinery::prune {
namespace {

using test::fixture;

std::unique_ptr<model::Transformer> load(const std::filesystem::path& dir) {
  return model::Transformer::load(dir, backend::make_cpu_backend(1));
}

ImportanceReport run(model::Transformer& m, const std::vector<int32_t>& tokens, int64_t seq_len) {
  CalibrationOptions o;
  o.seq_len = seq_len;
  return compute_importance(m, tokens, o);
}

TEST(PruneImportance, DemoModelInvariants) {
  auto m = load(test::demo_model());
  const auto& c = m->config();
  const auto tokens = test::random_tokens(48, c.vocab_size, 11);
  const ImportanceReport r = run(*m, tokens, 16);
  EXPECT_EQ(r.tokens, 48);
  EXPECT_EQ(r.windows, 3);
  ASSERT_EQ(static_cast<int>(r.layers.size()), c.num_layers);
  ASSERT_EQ(static_cast<int>(r.embedding_channels.size()), c.hidden_size);
  EXPECT_GT(*std::max_element(r.embedding_channels.begin(), r.embedding_channels.end()), 0.0);
  for (const LayerImportance& l : r.layers) {
    EXPECT_GE(l.block_score, 0.0);
    EXPECT_LE(l.block_score, 2.0);
    ASSERT_EQ(static_cast<int>(l.head_norm.size()), c.attention.num_heads);
    EXPECT_EQ(l.moe, c.layer_is_moe(l.layer));
    if (!l.moe) {
      ASSERT_EQ(static_cast<int>(l.mlp_channels.rms.size()), c.intermediate_size);
      for (std::size_t i = 0; i < l.mlp_channels.rms.size(); ++i)
        EXPECT_LE(l.mlp_channels.mean_abs[i], l.mlp_channels.rms[i] * (1 + 1e-12));  // Jensen
      EXPECT_FALSE(l.experts);
      continue;
    }
    ASSERT_TRUE(l.experts);
    const ExpertScores& e = *l.experts;
    // Every token is routed to exactly top_k experts.
    EXPECT_EQ(std::accumulate(e.routed_tokens.begin(), e.routed_tokens.end(), int64_t{0}),
              c.moe->experts_per_token * r.tokens);
    EXPECT_NEAR(std::accumulate(e.frequency.begin(), e.frequency.end(), 0.0), c.moe->experts_per_token, 1e-12);
    ASSERT_EQ(static_cast<int>(l.shared_channels.rms.size()), c.moe->shared_intermediate_size);
    for (std::size_t x = 0; x < e.gate_norm.size(); ++x) EXPECT_GE(e.gate_norm[x], 0.0);
  }
}

// Two tokens with top-2 reach at most 4 of mixtral's 8 experts: the others score 0 everywhere.
TEST(PruneImportance, UnroutedExpertsScoreZero) {
  auto m = load(fixture("mixtral_8e_top2"));
  const ImportanceReport r = run(*m, {5, 17}, 2);
  for (const LayerImportance& l : r.layers) {
    ASSERT_TRUE(l.experts);
    int unrouted = 0;
    for (std::size_t e = 0; e < l.experts->routed_tokens.size(); ++e) {
      if (l.experts->routed_tokens[e] > 0) {
        EXPECT_GT(l.experts->gate_norm[e], 0.0);
        continue;
      }
      ++unrouted;
      EXPECT_EQ(l.experts->frequency[e], 0.0);
      EXPECT_EQ(l.experts->gate_norm[e], 0.0);
      const auto& rms = l.experts->channels[e].rms;
      ASSERT_EQ(static_cast<int>(rms.size()), m->config().moe->expert_intermediate_size);
      EXPECT_EQ(*std::max_element(rms.begin(), rms.end()), 0.0);
    }
    EXPECT_GE(unrouted, 4);
  }
}

// 1 - cos(layer input, layer output) from transformers' own hidden states of input_ids_2.
TEST(PruneImportance, LayerScoresMatchTransformersHiddenStates) {
  for (const char* name : {"llama_gqa_llama3", "qwen2_moe_shared", "deepseek_v3_noaux", "mixtral_8e_top2"}) {
    SCOPED_TRACE(name);
    auto m = load(fixture(name));
    const test::ReferenceFile ref(fixture(name) / "reference_logits.safetensors");
    const auto ids = ref.ids("input_ids_2");
    const auto hs = ref.floats("hidden_states_2");  // [layers + 1, T, hidden]
    const int64_t t = static_cast<int64_t>(ids.size()), h = m->config().hidden_size;
    const ImportanceReport r = run(*m, ids, t);
    ASSERT_EQ(r.windows, 1);
    for (int l = 0; l < m->config().num_layers; ++l) {
      double sum = 0.0;
      for (int64_t i = 0; i < t; ++i) {
        const float* a = &hs[static_cast<std::size_t>((l * t + i) * h)];
        const float* b = &hs[static_cast<std::size_t>(((l + 1) * t + i) * h)];
        double dot = 0, na = 0, nb = 0;
        for (int64_t j = 0; j < h; ++j) {
          dot += double(a[j]) * b[j];
          na += double(a[j]) * a[j];
          nb += double(b[j]) * b[j];
        }
        sum += 1.0 - dot / std::sqrt(na * nb);
      }
      EXPECT_NEAR(r.layers[static_cast<std::size_t>(l)].block_score, sum / double(t), 1e-4) << "layer " << l;
    }
  }
}

// Records the MoE layer's router input (the post-attention norm output) and routing.
class RouterRecorder : public model::TapObserver {
 public:
  explicit RouterRecorder(std::string gate) : gate_(std::move(gate)) {}
  bool wants(std::string_view n) const override {
    return n == gate_ + ".input" || n == gate_ + ".experts" || n == gate_ + ".weights";
  }
  void observe(std::string_view n, const Tensor& v) override {
    const Tensor h = v.dtype() == DType::kF32 || v.dtype() == DType::kI32 ? v : v.to_f32();
    if (n == gate_ + ".input") x.assign(h.data<float>(), h.data<float>() + h.numel());
    if (n == gate_ + ".experts") experts.assign(h.data<int32_t>(), h.data<int32_t>() + h.numel());
    if (n == gate_ + ".weights") weights.assign(h.data<float>(), h.data<float>() + h.numel());
  }
  std::vector<float> x, weights;
  std::vector<int32_t> experts;

 private:
  std::string gate_;
};

// mean over routed tokens of gate x ||W2 (silu(W1 x) * W3 x)||, recomputed in double from the f32
// checkpoint of mixtral (w1 gate, w3 up, w2 down).
TEST(PruneImportance, GateNormMatchesDirectComputation) {
  const auto dir = fixture("mixtral_8e_top2");
  auto m = load(dir);
  const auto& c = m->config();
  const auto tokens = test::random_tokens(20, c.vocab_size, 3);
  const ImportanceReport r = run(*m, tokens, 20);
  RouterRecorder rec("layers.1.block_sparse_moe.gate");
  model::KvCache cache = m->make_cache(20);
  m->forward_hidden(tokens, cache, &rec);
  const io::Checkpoint ck = io::Checkpoint::open(dir);
  const int64_t hidden = c.hidden_size, inter = c.moe->expert_intermediate_size, k = c.moe->experts_per_token;
  auto weight = [&](int e, const char* w) {
    return reinterpret_cast<const float*>(
        ck.bytes("model.layers.1.block_sparse_moe.experts." + std::to_string(e) + "." + w + ".weight").data());
  };
  const auto& scores = *r.layers[1].experts;
  int checked = 0;
  for (int e = 0; e < c.moe->num_experts; ++e) {
    const float *w1 = weight(e, "w1"), *w3 = weight(e, "w3"), *w2 = weight(e, "w2");
    double sum = 0.0;
    int64_t n = 0;
    for (std::size_t i = 0; i < rec.experts.size(); ++i) {
      if (rec.experts[i] != e) continue;
      const float* x = &rec.x[(i / static_cast<std::size_t>(k)) * static_cast<std::size_t>(hidden)];
      std::vector<double> a(static_cast<std::size_t>(inter));
      for (int64_t j = 0; j < inter; ++j) {
        double g = 0, u = 0;
        for (int64_t q = 0; q < hidden; ++q) {
          g += double(w1[j * hidden + q]) * x[q];
          u += double(w3[j * hidden + q]) * x[q];
        }
        a[static_cast<std::size_t>(j)] = g / (1.0 + std::exp(-g)) * u;
      }
      double sq = 0;
      for (int64_t o = 0; o < hidden; ++o) {
        double y = 0;
        for (int64_t j = 0; j < inter; ++j) y += double(w2[o * inter + j]) * a[static_cast<std::size_t>(j)];
        sq += y * y;
      }
      sum += rec.weights[i] * std::sqrt(sq);
      ++n;
    }
    EXPECT_EQ(scores.routed_tokens[static_cast<std::size_t>(e)], n);
    const double want = n > 0 ? sum / double(n) : 0.0;
    EXPECT_NEAR(scores.gate_norm[static_cast<std::size_t>(e)], want, 1e-4 * std::max(1.0, want)) << "expert " << e;
    checked += n > 0;
  }
  EXPECT_GE(checked, 4);
}

TEST(PruneImportance, KvGroupsSumTheirHeads) {
  auto m = load(fixture("llama_gqa_llama3"));  // 4 heads, 2 KV heads
  const ImportanceReport r = run(*m, test::random_tokens(12, m->config().vocab_size, 5), 12);
  for (const LayerImportance& l : r.layers) {
    ASSERT_EQ(l.head_norm.size(), 4u);
    ASSERT_EQ(l.kv_group_norm.size(), 2u);
    EXPECT_DOUBLE_EQ(l.kv_group_norm[0], l.head_norm[0] + l.head_norm[1]);
    EXPECT_DOUBLE_EQ(l.kv_group_norm[1], l.head_norm[2] + l.head_norm[3]);
    for (double v : l.head_norm) EXPECT_GT(v, 0.0);
  }
}

TEST(PruneImportance, WindowsAndTokenLimit) {
  auto m = load(fixture("llama_gqa_llama3"));
  const auto tokens = test::random_tokens(50, m->config().vocab_size, 9);
  CalibrationOptions o;
  o.seq_len = 8;
  o.max_tokens = 20;  // whole windows only: 2 x 8
  const ImportanceReport r = compute_importance(*m, tokens, o);
  EXPECT_EQ(r.windows, 2);
  EXPECT_EQ(r.tokens, 16);
  o.seq_len = 100;  // longer than the stream: one window of all of it
  o.max_tokens = 0;
  EXPECT_EQ(compute_importance(*m, tokens, o).tokens, 50);
  EXPECT_THROW(compute_importance(*m, {}, o), Error);
  EXPECT_THROW(compute_importance(*m, std::vector<int32_t>{1, 100000}, o), Error);
}

TEST(PruneImportance, ReportJsonRoundTrip) {
  auto m = load(fixture("qwen2_moe_shared"));
  ImportanceReport r = run(*m, test::random_tokens(10, m->config().vocab_size, 2), 10);
  r.model = "somewhere";
  const nlohmann::json j = report_to_json(r);
  const ImportanceReport back = report_from_json(j, "test");
  EXPECT_EQ(report_to_json(back), j);
  ASSERT_TRUE(back.layers[0].experts);
  EXPECT_EQ(back.layers[0].experts->routed_tokens, r.layers[0].experts->routed_tokens);
  EXPECT_THROW(report_from_json(nlohmann::json{{"format", "other"}}, "x.json"), Error);
  nlohmann::json broken = j;
  broken.erase("layers");
  EXPECT_THROW(report_from_json(broken, "x.json"), Error);
}

}  // namespace
}  // namespace refinery::prune
