// AWQ (src/quantize/awq*): the scaling groups of each family, and on the trained MoE teacher
// (MLA, dense first layer, 16 routed + 1 shared experts): the search never does worse than RTN on
// its calibration loss, AWQ beats RTN on held-out KL at 3 bits, routing survives (router columns
// scaled with their experts), and a search that meets non-finite numbers finishes.
#include "quantize/awq.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"
#include "engine/eval/token_stream.hpp"
#include "engine/model/transformer.hpp"
#include "quantize/awq_groups.hpp"
#include "quantize/quantized_model_writer.hpp"
#include "quantize/rtn.hpp"
#include "tests/quantize/awq_test_util.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::quantize {
namespace {

using awq_test_util::cpu;
using awq_test_util::kLength;
using awq_test_util::kTeacher;
using awq_test_util::sample_windows;

// Mean over positions of KL(p_ref || p_q) of the next-token distributions.
double mean_kl(model::Transformer& ref, model::Transformer& q, const std::vector<int32_t>& tokens) {
  double total = 0.0;
  int64_t positions = 0;
  for (std::size_t w = 0; w < tokens.size(); w += kLength) {
    const std::span<const int32_t> window(tokens.data() + w, kLength);
    const Tensor a = ref.forward(window), b = q.forward(window);
    const int64_t vocab = a.size(1);
    for (int64_t r = 0; r < kLength; ++r) {
      const float* pa = a.data<float>() + r * vocab;
      const float* pb = b.data<float>() + r * vocab;
      double ma = -INFINITY, mb = -INFINITY, sa = 0.0, sb = 0.0;
      for (int64_t j = 0; j < vocab; ++j) ma = std::max(ma, double(pa[j])), mb = std::max(mb, double(pb[j]));
      for (int64_t j = 0; j < vocab; ++j) sa += std::exp(pa[j] - ma), sb += std::exp(pb[j] - mb);
      const double la = ma + std::log(sa), lb = mb + std::log(sb);
      double kl = 0.0;
      for (int64_t j = 0; j < vocab; ++j) {
        const double lpa = pa[j] - la;
        kl += std::exp(lpa) * (lpa - (pb[j] - lb));
      }
      total += kl;
      ++positions;
    }
  }
  return total / static_cast<double>(positions);
}

GroupQuantSpec spec_of(int bits, int group) {
  GroupQuantSpec s;
  s.bits = bits;
  s.group_size = group;
  return s;
}

TEST(AwqGroups, MlaDenseAndMoeLayersOfTheTeacher) {
  auto model = model::Transformer::load(kTeacher, cpu());
  const auto dense = scale_groups(model->config(), model->weights(), 0);
  ASSERT_EQ(dense.size(), 5u);
  EXPECT_EQ(dense[0].inspect, Inspect::kAttention);
  EXPECT_EQ(dense[0].prev_norm, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(dense[0].linears, (std::vector<std::string>{"model.layers.0.self_attn.q_a_proj",
                                                       "model.layers.0.self_attn.kv_a_proj_with_mqa"}));
  EXPECT_EQ(dense[1].prev_norm, "model.layers.0.self_attn.q_a_layernorm.weight");
  EXPECT_EQ(dense[2].prev_norm, "model.layers.0.self_attn.kv_a_layernorm.weight");
  EXPECT_EQ(dense[3].inspect, Inspect::kMlp);
  EXPECT_EQ(dense[4].prev_linear, "model.layers.0.mlp.up_proj");

  const auto moe = scale_groups(model->config(), model->weights(), 1);
  // qkv_a, q_b, kv_b, experts gate/up, 16 expert downs, the shared expert's down.
  ASSERT_EQ(moe.size(), 3u + 1u + 16u + 1u);
  const ScaleGroup& gate_up = moe[3];
  EXPECT_EQ(gate_up.inspect, Inspect::kMlp);
  EXPECT_EQ(gate_up.linears.size(), 2u * 16u + 2u);
  EXPECT_EQ(gate_up.passengers, std::vector<std::string>{"model.layers.1.mlp.gate"});
  EXPECT_EQ(*moe[4].expert_down, 0);
  EXPECT_EQ(moe[4].prev_linear, "model.layers.1.mlp.experts.0.up_proj");
  EXPECT_EQ(moe.back().prev_linear, "model.layers.1.mlp.shared_experts.up_proj");
}

// Quantizes the teacher with AWQ and with RTN (same spec) into `dir`/awq and `dir`/rtn.
AwqResult quantize_both(const test::ScratchDir& dir, const GroupQuantSpec& spec) {
  auto model = model::Transformer::load(kTeacher, cpu());
  AwqOptions options;
  options.spec = spec;
  options.chunk_sequences = 8;
  const std::vector<int32_t> calib = sample_windows(0, 16);
  AwqResult awq = quantize_awq(*model, calib, 16, options);
  write_quantized_model(kTeacher, dir.file("awq"), awq.parts, spec, {{"pass", "test"}});
  const RtnResult rtn = quantize_rtn(model->weights(), spec);
  write_quantized_model(kTeacher, dir.file("rtn"), rtn.parts, spec, {{"pass", "test"}});
  return awq;
}

TEST(Awq, BeatsRtnOnHeldOutKlAtThreeBits) {
  test::ScratchDir dir;
  const AwqResult awq = quantize_both(dir, spec_of(3, 64));
  int searched = 0, scaled = 0;
  for (const auto& g : awq.groups) {
    EXPECT_LE(g.loss_best, g.loss_rtn) << g.name;  // s = 1 is a candidate
    EXPECT_EQ(g.non_finite, 0) << g.name;
    if (!g.note.empty()) continue;  // e.g. experts' down projections: 48 inputs fit no group
    ++searched;
    scaled += g.ratio >= 0.0;
    if (g.ratio >= 0.0) EXPECT_LT(g.loss_best, g.loss_rtn) << g.name;
  }
  EXPECT_GT(searched, 20);
  EXPECT_GE(2 * scaled, searched) << "most searched groups should find a scale";
  auto dense = model::Transformer::load(kTeacher, cpu());
  auto a = model::Transformer::load(dir.file("awq"), cpu());
  auto r = model::Transformer::load(dir.file("rtn"), cpu());
  const std::vector<int32_t> held_out = sample_windows(40, 6);
  const double kl_awq = mean_kl(*dense, *a, held_out), kl_rtn = mean_kl(*dense, *r, held_out);
  RecordProperty("kl_awq", std::to_string(kl_awq));
  RecordProperty("kl_rtn", std::to_string(kl_rtn));
  // Measured 0.107 vs 0.127 (this model has few activation outliers, so AWQ's margin is modest;
  // docs/BENCHMARKS.md has the perplexity comparison the issue asks for).
  EXPECT_LT(kl_awq, 0.9 * kl_rtn) << "AWQ " << kl_awq << " vs RTN " << kl_rtn;
}

// The router reads the scaled norm output; its columns are scaled with the experts, so at 8 bits
// (tiny weight noise) the experts chosen on held-out tokens are (almost) those of the original.
class RoutingCapture final : public model::TapObserver {
 public:
  bool wants(std::string_view name) const override {
    return name.size() > 13 && name.substr(name.size() - 13) == ".gate.experts";
  }
  void observe(std::string_view, const Tensor& v) override {
    const int32_t* p = v.data<int32_t>();
    experts.insert(experts.end(), p, p + v.numel());
  }
  std::vector<int32_t> experts;
};

TEST(Awq, RoutingSurvivesAtEightBits) {
  test::ScratchDir dir;
  auto model = model::Transformer::load(kTeacher, cpu());
  AwqOptions options;
  options.spec = spec_of(8, 64);
  const AwqResult awq = quantize_awq(*model, sample_windows(0, 8), 8, options);
  write_quantized_model(kTeacher, dir.file("w8"), awq.parts, options.spec, {{"pass", "test"}});
  auto dense = model::Transformer::load(kTeacher, cpu());
  auto q = model::Transformer::load(dir.file("w8"), cpu());
  const std::vector<int32_t> held_out = sample_windows(40, 4);
  RoutingCapture before, after;
  for (std::size_t w = 0; w < held_out.size(); w += kLength) {
    const std::span<const int32_t> window(held_out.data() + w, kLength);
    dense->forward(window, nullptr, &before);
    q->forward(window, nullptr, &after);
  }
  ASSERT_EQ(before.experts.size(), after.experts.size());
  ASSERT_FALSE(before.experts.empty());
  int64_t same = 0;
  for (std::size_t i = 0; i < before.experts.size(); ++i) same += before.experts[i] == after.experts[i];
  EXPECT_GE(static_cast<double>(same) / static_cast<double>(before.experts.size()), 0.97);
}

TEST(Awq, NonFiniteWeightsNeverAbortTheRun) {
  auto model = model::Transformer::load(kTeacher, cpu());
  // One infinite weight in layer 0's q_a_proj: every candidate of its group has a non-finite
  // loss; the group stays unscaled, the linear stays dense, the run completes.
  backend::LinearWeight& w = model->mutable_weights().layers[0].attention.q_a_proj;
  Tensor f = std::get<backend::DenseWeight>(w.storage).weight.to_f32();
  f.mutable_data<float>()[5] = INFINITY;
  w.storage = backend::DenseWeight{f};
  AwqOptions options;
  options.spec = spec_of(4, 64);
  const AwqResult awq = quantize_awq(*model, sample_windows(0, 4), 4, options);
  ASSERT_FALSE(awq.groups.empty());
  EXPECT_EQ(awq.groups[0].ratio, -1.0);
  EXPECT_GT(awq.groups[0].non_finite, 0);
  EXPECT_FALSE(awq.groups[0].note.empty());
  EXPECT_EQ(awq.parts.quantized.count("model.layers.0.self_attn.q_a_proj"), 0u);
  EXPECT_GT(awq.parts.quantized.size(), 10u);  // the rest of the model is quantized
}

}  // namespace
}  // namespace refinery::quantize
