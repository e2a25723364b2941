// MoE -> dense initialization (src/prune/to_dense.hpp). The routing statistics against a router
// written here from the tapped logits; the written dense FFNs against a hand computation of
// sum_e c_e SwiGLU_e(x) (+ the shared expert) from the parent's weights, with k = all experts, a
// single expert, shared experts and zero padding; the written directories load in the engine and
// give the logits transformers computes on the same directories
// (tests/fixtures/prune/to_dense/*, made by tests/fixtures/prune/make_to_dense_reference.py, which
// also asserts that transformers loads every weight with no missing or unexpected key).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <numeric>

#include "engine/io/checkpoint.hpp"
#include "engine/model/transformer.hpp"
#include "prune/importance.hpp"
#include "prune/to_dense.hpp"
#include "prune_test_util.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::prune {
namespace {

namespace fs = std::filesystem;
using ::refinery::test::error_message_of;
using ::refinery::test::ScratchDir;

using test::read_json;

constexpr int64_t kCalibTokens = 64;

std::vector<int32_t> calib_tokens(int vocab) { return test::random_tokens(kCalibTokens, vocab, 11); }

CalibrationOptions calib_options() {
  CalibrationOptions o;
  o.seq_len = 32;
  return o;
}

struct Calibrated {
  ImportanceReport report;
  RoutingStats stats;
};

Calibrated calibrate(const fs::path& parent) {
  auto m = model::Transformer::load(parent, backend::make_cpu_backend(1));
  const auto tokens = calib_tokens(m->config().vocab_size);
  return {compute_importance(*m, tokens, calib_options()), compute_routing_stats(*m, tokens, calib_options())};
}

std::vector<float> host(const backend::LinearWeight& w) {
  const Tensor t = std::get<backend::DenseWeight>(w.storage).weight.to_f32();
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

// SwiGLU by hand: down · (silu(gate · x) * (up · x)) for one row x [hidden].
std::vector<double> swiglu(const backend::LinearWeight& gate, const backend::LinearWeight& up,
                           const backend::LinearWeight& down, const std::vector<float>& x) {
  const auto g = host(gate), u = host(up), d = host(down);
  const std::size_t h = x.size(), n = g.size() / h;
  std::vector<double> a(n), y(h, 0.0);
  for (std::size_t i = 0; i < n; ++i) {
    double gv = 0, uv = 0;
    for (std::size_t j = 0; j < h; ++j) {
      gv += double(g[i * h + j]) * x[j];
      uv += double(u[i * h + j]) * x[j];
    }
    a[i] = gv / (1.0 + std::exp(-gv)) * uv;
  }
  for (std::size_t r = 0; r < h; ++r)
    for (std::size_t i = 0; i < n; ++i) y[r] += double(d[r * n + i]) * a[i];
  return y;
}

// Records router logits and shared-gate inputs of every MoE layer.
struct RouterRecorder : model::TapObserver {
  std::map<std::string, std::vector<float>> values;
  bool wants(std::string_view name) const override {
    return name.ends_with(".gate.logits") || name.ends_with("shared_expert_gate.input");
  }
  void observe(std::string_view name, const Tensor& v) override {
    auto& dst = values[std::string(name)];
    dst.insert(dst.end(), v.data<float>(), v.data<float>() + v.numel());
  }
};

// Softmax routing by hand (mixtral, qwen2_moe, qwen3_moe): top-k of the softmax, ties to the
// lower index, optionally renormalized.
void hand_route(const std::vector<float>& logits, int e_count, int k, bool norm, std::vector<int64_t>& routed,
                std::vector<double>& gate_sum) {
  routed.assign(static_cast<std::size_t>(e_count), 0);
  gate_sum.assign(static_cast<std::size_t>(e_count), 0.0);
  for (std::size_t t = 0; t < logits.size() / e_count; ++t) {
    std::vector<double> p(static_cast<std::size_t>(e_count));
    double mx = -1e30, sum = 0;
    for (int e = 0; e < e_count; ++e) mx = std::max(mx, double(logits[t * e_count + e]));
    for (int e = 0; e < e_count; ++e) sum += p[e] = std::exp(logits[t * e_count + e] - mx);
    std::vector<int> idx(static_cast<std::size_t>(e_count));
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return p[a] > p[b]; });
    double top = 0;
    for (int j = 0; j < k; ++j) top += p[idx[j]] / sum;
    for (int j = 0; j < k; ++j) {
      ++routed[idx[j]];
      gate_sum[idx[j]] += norm ? p[idx[j]] / sum / top : p[idx[j]] / sum;
    }
  }
}

class RoutingStatsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RoutingStatsTest, MatchAHandRouterOverTheTappedLogits) {
  auto m = model::Transformer::load(test::fixture(GetParam()), backend::make_cpu_backend(1));
  const auto& c = m->config();
  const auto tokens = calib_tokens(c.vocab_size);
  const RoutingStats stats = compute_routing_stats(*m, tokens, calib_options());
  EXPECT_EQ(stats.tokens, kCalibTokens);
  RouterRecorder rec;
  for (int w = 0; w < 2; ++w) m->forward(std::span(tokens).subspan(w * 32, 32), nullptr, &rec);
  ASSERT_EQ(static_cast<int>(stats.layers.size()), c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    const auto& s = stats.layers[static_cast<std::size_t>(l)];
    if (!c.layer_is_moe(l)) {
      EXPECT_TRUE(s.routed.empty());
      continue;
    }
    const auto& lw = m->weights().layers[static_cast<std::size_t>(l)];
    const std::string gate = lw.mlp_prefix.substr(6) + ".gate";
    std::vector<int64_t> routed;
    std::vector<double> gate_sum;
    hand_route(rec.values.at(gate + ".logits"), c.moe->num_experts, c.moe->experts_per_token, c.moe->norm_topk_prob,
               routed, gate_sum);
    EXPECT_EQ(s.routed, routed) << "layer " << l;
    for (int e = 0; e < c.moe->num_experts; ++e) EXPECT_NEAR(s.gate_sum[e], gate_sum[e], 1e-4) << l << " " << e;
    if (c.moe->shared_expert_gate) {
      const auto& x = rec.values.at(lw.moe->shared_gate.name.substr(6) + ".input");
      const auto g = host(lw.moe->shared_gate);
      double want = 0;
      for (std::size_t t = 0; t < x.size() / g.size(); ++t) {
        double dot = 0;
        for (std::size_t j = 0; j < g.size(); ++j) dot += double(g[j]) * x[t * g.size() + j];
        want += 1.0 / (1.0 + std::exp(-dot));
      }
      EXPECT_NEAR(s.shared_gate_sum, want, 1e-4);
      EXPECT_GT(want, 0.0);
    } else {
      EXPECT_EQ(s.shared_gate_sum, 0.0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(PruneToDense, RoutingStatsTest,
                         ::testing::Values("mixtral_8e_top2", "qwen2_moe_shared", "qwen3_moe_normtopk"),
                         [](const auto& info) { return info.param; });

// The dense model's FFN of layer `l` on random rows vs the hand sum over the parent's pieces.
void expect_dense_ffn(const fs::path& parent, const fs::path& dense, const ToDenseResult& r, const Calibrated& cal,
                      GateScale scale) {
  auto pm = model::Transformer::load(parent, backend::make_cpu_backend(1));
  auto dm = model::Transformer::load(dense, backend::make_cpu_backend(1));
  const auto& c = pm->config();
  EXPECT_FALSE(dm->config().layer_is_moe(0));
  EXPECT_EQ(dm->config().num_moe_layers(), 0);
  EXPECT_EQ(dm->config().intermediate_size, r.intermediate_size);
  const auto xs = test::random_tokens(3 * c.hidden_size, 1000, 3);
  std::vector<float> x(xs.size());
  for (std::size_t i = 0; i < xs.size(); ++i) x[i] = (xs[i] - 500) / 400.0f;
  const Tensor xt = Tensor::copy_of(DType::kF32, {3, c.hidden_size}, x.data());
  for (int l = 0; l < c.num_layers; ++l) {
    const Tensor y = dm->mlp_block(l, xt);
    const auto& lw = pm->weights().layers[static_cast<std::size_t>(l)];
    const auto& d = r.layers[static_cast<std::size_t>(l)];
    const auto& s = cal.stats.layers[static_cast<std::size_t>(l)];
    for (int t = 0; t < 3; ++t) {
      const std::vector<float> row(x.begin() + t * c.hidden_size, x.begin() + (t + 1) * c.hidden_size);
      std::vector<double> want(static_cast<std::size_t>(c.hidden_size), 0.0);
      const auto add = [&](const std::vector<double>& v, double w) {
        for (std::size_t j = 0; j < v.size(); ++j) want[j] += w * v[j];
      };
      if (lw.mlp) add(swiglu(lw.mlp->gate_proj, lw.mlp->up_proj, lw.mlp->down_proj, row), 1.0);
      if (lw.moe && lw.moe->shared)
        add(swiglu(lw.moe->shared->gate_proj, lw.moe->shared->up_proj, lw.moe->shared->down_proj, row),
            c.moe->shared_expert_gate ? s.shared_gate_sum / double(kCalibTokens) : 1.0);
      for (std::size_t i = 0; i < d.experts.size(); ++i) {
        const int e = d.experts[i];
        const double ce = s.routed[e] == 0                 ? 0.0
                          : scale == GateScale::kRoutedMean ? s.gate_sum[e] / double(s.routed[e])
                                                            : s.gate_sum[e] / double(kCalibTokens);
        EXPECT_NEAR(d.scales[i], ce, 1e-12);
        const auto& ew = lw.moe->experts[static_cast<std::size_t>(e)];
        add(swiglu(ew.gate, ew.up, ew.down, row), ce);
      }
      double mx = 0;
      for (double v : want) mx = std::max(mx, std::abs(v));
      ASSERT_GT(mx, 0.0);
      for (int j = 0; j < c.hidden_size; ++j)
        EXPECT_NEAR(y.data<float>()[t * c.hidden_size + j], want[j], 1e-4 * mx) << "layer " << l << " row " << t;
    }
  }
}

TEST(PruneToDense, AllExpertsOfMixtralAreTheGateWeightedSum) {
  const fs::path parent = test::fixture("mixtral_8e_top2");
  const Calibrated cal = calibrate(parent);
  for (const GateScale scale : {GateScale::kRoutedMean, GateScale::kExpected}) {
    ScratchDir scratch;
    ToDenseOptions o;
    o.routed_experts_per_layer = 8;
    o.gate_scale = scale;
    const ToDenseResult r = write_dense_from_moe(parent, cal.report, cal.stats, o, scratch.path() / "dense");
    EXPECT_EQ(r.model_type, "mistral");
    EXPECT_EQ(r.intermediate_size, 8 * 56);
    const nlohmann::json cfg = read_json(scratch.path() / "dense" / "config.json");
    EXPECT_EQ(cfg["model_type"], "mistral");
    EXPECT_EQ(cfg["architectures"][0], "MistralForCausalLM");
    EXPECT_FALSE(cfg.contains("num_local_experts"));
    for (const auto& d : r.layers) EXPECT_EQ(d.experts, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
    if (scale == GateScale::kExpected) {
      // Expected weights sum to 1 per layer (mixtral renormalizes the top-2).
      for (const auto& d : r.layers) EXPECT_NEAR(std::accumulate(d.scales.begin(), d.scales.end(), 0.0), 1.0, 1e-5);
    }
    expect_dense_ffn(parent, scratch.path() / "dense", r, cal, scale);
  }
}

TEST(PruneToDense, SingleExpertIsTheScaledExpertPaddedToTheDenseWidth) {
  const fs::path parent = test::fixture("qwen3_moe_normtopk");  // layers 1, 3 MoE (8 x 24), 0, 2 dense (64)
  const Calibrated cal = calibrate(parent);
  ScratchDir scratch;
  const fs::path out = scratch.path() / "dense";
  ToDenseOptions o;
  o.routed_experts_per_layer = 1;
  const ToDenseResult r = write_dense_from_moe(parent, cal.report, cal.stats, o, out);
  EXPECT_EQ(r.model_type, "qwen3");
  EXPECT_EQ(r.intermediate_size, 64);
  const io::Checkpoint pc = io::Checkpoint::open(parent), dc = io::Checkpoint::open(out);
  const auto floats = [](const io::Checkpoint& ck, const std::string& n) {
    const auto b = ck.bytes(n);
    std::vector<float> v(b.size() / 4);
    std::memcpy(v.data(), b.data(), b.size());
    return v;
  };
  for (int l : {1, 3}) {
    const auto& f = cal.report.layers[static_cast<std::size_t>(l)].experts->frequency;
    const int best = static_cast<int>(std::max_element(f.begin(), f.end()) - f.begin());
    ASSERT_EQ(r.layers[static_cast<std::size_t>(l)].experts, std::vector<int>{best});
    const auto& s = cal.stats.layers[static_cast<std::size_t>(l)];
    const double c = s.gate_sum[best] / double(s.routed[best]);
    const std::string e = "model.layers." + std::to_string(l) + ".mlp.experts." + std::to_string(best) + ".";
    const std::string d = "model.layers." + std::to_string(l) + ".mlp.";
    for (const char* p : {"gate_proj", "up_proj"}) {
      const auto src = floats(pc, e + p + ".weight"), dst = floats(dc, d + p + ".weight");
      ASSERT_EQ(dst.size(), 64u * 48u);
      for (std::size_t i = 0; i < dst.size(); ++i) EXPECT_EQ(dst[i], i < src.size() ? src[i] : 0.0f) << p << i;
    }
    const auto src = floats(pc, e + "down_proj.weight"), dst = floats(dc, d + "down_proj.weight");  // [48, 24] -> [48, 64]
    for (int row = 0; row < 48; ++row)
      for (int col = 0; col < 64; ++col)
        EXPECT_FLOAT_EQ(dst[row * 64 + col], col < 24 ? float(c * src[row * 24 + col]) : 0.0f);
  }
  // Dense layers and attention are the parent's bytes; no expert or router is left.
  for (const std::string& n : dc.names()) {
    EXPECT_EQ(n.find("experts"), std::string::npos) << n;
    EXPECT_EQ(n.find("mlp.gate."), std::string::npos) << n;
    if (n.find(".mlp.") == std::string::npos || n.find("layers.0.") != std::string::npos) {
      const auto a = pc.bytes(n), b = dc.bytes(n);
      ASSERT_EQ(a.size(), b.size()) << n;
      EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0) << n;
    }
  }
  expect_dense_ffn(parent, out, r, cal, GateScale::kRoutedMean);
}

TEST(PruneToDense, DeepseekKeepsMlaAndPadsItsDenseLayer) {
  const fs::path parent = test::fixture("deepseek_v2_lite");  // 2 shared x 24, dense layer 0 of 88
  const Calibrated cal = calibrate(parent);
  ScratchDir scratch;
  const fs::path out = scratch.path() / "dense";
  ToDenseOptions o;
  o.routed_experts_per_layer = 2;
  o.metric = ExpertMetric::kGateNorm;
  const ToDenseResult r = write_dense_from_moe(parent, cal.report, cal.stats, o, out);
  EXPECT_EQ(r.model_type, "deepseek_v2");
  EXPECT_EQ(r.intermediate_size, 96);  // 2 x 24 shared + 2 x 24 > 88: the dense layer is padded
  const nlohmann::json cfg = read_json(out / "config.json");
  EXPECT_EQ(cfg["first_k_dense_replace"], 3);
  EXPECT_EQ(cfg["intermediate_size"], 96);
  for (int l : {1, 2}) {
    const auto& g = cal.report.layers[static_cast<std::size_t>(l)].experts->gate_norm;
    std::vector<int> idx(8);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return g[a] > g[b]; });
    std::vector<int> want(idx.begin(), idx.begin() + 2);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(r.layers[static_cast<std::size_t>(l)].experts, want);
  }
  expect_dense_ffn(parent, out, r, cal, GateScale::kRoutedMean);
  const nlohmann::json prov = read_json(out / "refinery.json");
  EXPECT_EQ(prov["pass"], "to_dense");
  EXPECT_EQ(prov["to_dense"]["metric"], "gate_norm");
  EXPECT_EQ(prov["to_dense"]["layers"][1]["experts"], nlohmann::json(r.layers[1].experts));
  EXPECT_EQ(prov["parameters_after"], r.parameters_after);
}

TEST(PruneToDense, QwenSharedGateAndTokenizerFiles) {
  const fs::path parent = test::fixture("qwen2_moe_shared");
  const Calibrated cal = calibrate(parent);
  ScratchDir scratch;
  ToDenseOptions o;
  o.routed_experts_per_layer = 2;
  const ToDenseResult r = write_dense_from_moe(parent, cal.report, cal.stats, o, scratch.path() / "dense");
  EXPECT_EQ(r.model_type, "qwen2");
  EXPECT_EQ(r.intermediate_size, 88);  // 40 shared + 2 x 24 > the dense layer's 72
  expect_dense_ffn(parent, scratch.path() / "dense", r, cal, GateScale::kRoutedMean);

  // The demo model: the tokenizer files travel, the written model runs.
  const Calibrated demo = calibrate(test::demo_model());
  const fs::path out = scratch.path() / "demo";
  write_dense_from_moe(test::demo_model(), demo.report, demo.stats, o, out);
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(out / "tokenizer_config.json"));
  auto m = model::Transformer::load(out, backend::make_cpu_backend(1));
  const Tensor logits = m->forward(test::random_tokens(7, m->config().vocab_size, 1));
  for (int64_t i = 0; i < logits.numel(); ++i) ASSERT_TRUE(std::isfinite(logits.data<float>()[i]));
}

TEST(PruneToDense, UserErrors) {
  const fs::path moe = test::fixture("mixtral_8e_top2");
  const Calibrated cal = calibrate(moe);
  ScratchDir scratch;
  ToDenseOptions o;
  o.routed_experts_per_layer = 9;
  EXPECT_NE(error_message_of([&] { write_dense_from_moe(moe, cal.report, cal.stats, o, scratch.path() / "a"); })
                .find("1..8"),
            std::string::npos);
  o.routed_experts_per_layer = 0;  // no shared experts to keep alone
  error_message_of([&] { write_dense_from_moe(moe, cal.report, cal.stats, o, scratch.path() / "a"); });
  o.routed_experts_per_layer = 2;
  o.metric = ExpertMetric::kRandom;
  error_message_of([&] { write_dense_from_moe(moe, cal.report, cal.stats, o, scratch.path() / "a"); });
  o.metric = ExpertMetric::kFrequency;
  const Calibrated other = calibrate(test::fixture("qwen3_moe_normtopk"));  // 4 layers, not 2
  EXPECT_NE(error_message_of([&] { write_dense_from_moe(moe, other.report, other.stats, o, scratch.path() / "a"); })
                .find("another model"),
            std::string::npos);
  EXPECT_NE(error_message_of([&] {
              write_dense_from_moe(test::fixture("llama_gqa_llama3"), cal.report, cal.stats, o, scratch.path() / "a");
            }).find("dense"),
            std::string::npos);
  EXPECT_NE(error_message_of([&] {
              write_dense_from_moe(test::fixture("deepseek_v3_fp8"), cal.report, cal.stats, o, scratch.path() / "a");
            }).find("dequantize"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(scratch.path() / "a"));
  fs::create_directories(scratch.path() / "full");
  std::ofstream(scratch.path() / "full" / "x") << "x";
  error_message_of([&] { write_dense_from_moe(moe, cal.report, cal.stats, o, scratch.path() / "full"); });
  EXPECT_TRUE(fs::exists(scratch.path() / "full" / "x"));
  EXPECT_EQ(parse_gate_scale("expected"), GateScale::kExpected);
  error_message_of([] { parse_gate_scale("mean"); });
}

// ---- transformers references (tests/fixtures/prune/to_dense/<case>) ----

struct DenseCase {
  std::string name, parent;
  int k;
  ExpertMetric metric;
  GateScale scale;
};

std::vector<DenseCase> dense_cases() {
  return {{"mixtral_to_mistral", "mixtral_8e_top2", 3, ExpertMetric::kFrequency, GateScale::kRoutedMean},
          {"qwen2_moe_to_qwen2", "qwen2_moe_shared", 2, ExpertMetric::kFrequency, GateScale::kRoutedMean},
          {"qwen3_moe_to_qwen3", "qwen3_moe_normtopk", 3, ExpertMetric::kGateNorm, GateScale::kExpected},
          {"deepseek_v2_dense", "deepseek_v2_lite", 2, ExpertMetric::kFrequency, GateScale::kRoutedMean},
          {"deepseek_v3_dense", "deepseek_v3_noaux", 3, ExpertMetric::kGateNorm, GateScale::kRoutedMean}};
}

ToDenseResult write_case(const DenseCase& dc, const fs::path& out) {
  const fs::path parent = test::fixture(dc.parent);
  const Calibrated cal = calibrate(parent);
  ToDenseOptions o;
  o.routed_experts_per_layer = dc.k;
  o.metric = dc.metric;
  o.gate_scale = dc.scale;
  o.force = true;
  return write_dense_from_moe(parent, cal.report, cal.stats, o, out);
}

// Not a test: make_to_dense_reference.py runs it with REFINERY_TO_DENSE_OUT set to write every
// case's directory for transformers to load.
TEST(PruneToDenseFixtureWriter, DISABLED_WriteCases) {
  const char* dir = std::getenv("REFINERY_TO_DENSE_OUT");
  if (dir == nullptr) GTEST_SKIP() << "REFINERY_TO_DENSE_OUT not set (used by make_to_dense_reference.py)";
  for (const DenseCase& dc : dense_cases()) write_case(dc, fs::path(dir) / dc.name);
}

class DenseReferenceTest : public ::testing::TestWithParam<DenseCase> {};

TEST_P(DenseReferenceTest, LogitsMatchTransformersOnTheDenseDirectory) {
  const DenseCase& dc = GetParam();
  const fs::path dir = test::prune_fixtures() / "to_dense" / dc.name;
  const nlohmann::json ref = read_json(dir / "reference.json");
  ScratchDir scratch;
  const fs::path out = scratch.path() / "dense";
  const ToDenseResult r = write_case(dc, out);
  EXPECT_EQ(r.parameters_after, ref["parameters"].get<int64_t>());
  const nlohmann::json config = read_json(out / "config.json");
  for (const auto& [key, value] : ref["config"].items()) EXPECT_EQ(config[key], value) << key;
  auto m = model::Transformer::load(out, backend::make_cpu_backend(1));
  const test::ReferenceFile logits(dir / "reference_logits.safetensors");
  int sequences = 0;
  for (int i = 0; logits.has("input_ids_" + std::to_string(i)); ++i, ++sequences) {
    const auto ids = logits.ids("input_ids_" + std::to_string(i));
    const auto want = logits.floats("logits_" + std::to_string(i));
    const Tensor got = m->forward(ids);
    ASSERT_EQ(static_cast<std::size_t>(got.numel()), want.size());
    double scale = 0, err = 0;
    for (std::size_t k = 0; k < want.size(); ++k) {
      scale = std::max(scale, double(std::abs(want[k])));
      err = std::max(err, double(std::abs(got.data<float>()[k] - want[k])));
    }
    EXPECT_LE(err, 1e-4 * scale) << dc.name << " sequence " << i;
  }
  EXPECT_EQ(sequences, 2);
}

INSTANTIATE_TEST_SUITE_P(PruneToDense, DenseReferenceTest, ::testing::ValuesIn(dense_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace refinery::prune
