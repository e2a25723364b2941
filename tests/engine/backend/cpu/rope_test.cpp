// RoPE: inv_freq of every type vs numbers frozen from transformers 5.24 (tests/fixtures/
// make_rope_golden.py), tables vs the closed form, and the rotation vs a naive loop for both
// pairings, an offset (MLA) and partial rotary.
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend_test_util.hpp"
#include "engine/model/model_config.hpp"

namespace refinery::backend {
namespace {

using model::RopeConfig;
using model::RopePairing;

TEST(CpuRope, InvFreqMatchesTransformers) {
  std::ifstream in(std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/rope/rope_golden.json");
  ASSERT_TRUE(in.good());
  const auto golden = nlohmann::json::parse(in);
  ASSERT_GE(golden["cases"].size(), 7u);
  for (const auto& c : golden["cases"]) {
    // Through the real config parser: a llama config.json with these rope_parameters.
    nlohmann::json cfg = {{"model_type", "llama"},
                          {"vocab_size", 10},
                          {"hidden_size", 2 * c["head_dim"].get<int>()},
                          {"num_hidden_layers", 1},
                          {"intermediate_size", 4},
                          {"num_attention_heads", 2},
                          {"head_dim", c["head_dim"]},
                          {"max_position_embeddings", c["max_position_embeddings"]},
                          {"rope_parameters", c["rope_parameters"]}};
    const model::ModelConfig mc = model::parse_model_config(cfg, c["name"].get<std::string>());
    const std::vector<float> inv = rope_inv_freq(mc.rope);
    const auto expected = c["inv_freq"].get<std::vector<double>>();
    ASSERT_EQ(inv.size(), expected.size()) << c["name"];
    for (std::size_t i = 0; i < inv.size(); ++i)
      EXPECT_NEAR(inv[i], expected[i], 2e-6 * std::abs(expected[i])) << c["name"] << " i=" << i;
    EXPECT_NEAR(mc.rope.attention_factor, c["attention_factor"].get<double>(), 1e-9) << c["name"];

    // Table = closed form cos/sin(p * inv) * attention_factor.
    const RopeTable table = make_rope_table(mc.rope, 50);
    for (int64_t p : {0, 1, 17, 49})
      for (std::size_t i = 0; i < inv.size(); ++i) {
        const double a = double(float(p) * float(expected[i]));
        EXPECT_NEAR(table.cos.data<float>()[p * inv.size() + i],
                    std::cos(a) * mc.rope.attention_factor, 3e-6);
        EXPECT_NEAR(table.sin.data<float>()[p * inv.size() + i],
                    std::sin(a) * mc.rope.attention_factor, 3e-6);
      }
  }
}

// Naive rotation with the closed-form angles.
std::vector<float> naive_rope(const Tensor& x, const std::vector<float>& inv, double af,
                              bool interleaved, int64_t p0, int64_t offset) {
  const int64_t t = x.size(0), h = x.size(1), d = x.size(2),
                half = static_cast<int64_t>(inv.size());
  std::vector<float> y = test::values(x);
  for (int64_t ti = 0; ti < t; ++ti)
    for (int64_t hi = 0; hi < h; ++hi)
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(float(p0 + ti) * inv[i]);
        const int64_t ia = offset + (interleaved ? 2 * i : i),
                      ib = offset + (interleaved ? 2 * i + 1 : i + half);
        const double x0 = x.data<float>()[(ti * h + hi) * d + ia],
                     x1 = x.data<float>()[(ti * h + hi) * d + ib];
        y[(ti * h + hi) * d + ia] = float((x0 * std::cos(a) - x1 * std::sin(a)) * af);
        y[(ti * h + hi) * d + ib] = float((x1 * std::cos(a) + x0 * std::sin(a)) * af);
      }
  return y;
}

TEST(CpuRope, RotationMatchesNaiveForBothPairingsOffsetAndPartial) {
  auto be = make_cpu_backend();
  RopeConfig rc;
  rc.type = model::RopeType::kYarn;
  rc.factor = 4.0;
  rc.original_max_position_embeddings = 32;
  rc.attention_factor = 1.1386;
  for (RopePairing pairing : {RopePairing::kHalfSplit, RopePairing::kInterleaved}) {
    for (const auto& [d, rot, offset] : std::vector<std::tuple<int64_t, int, int64_t>>{
             {24, 24, 0}, {24, 8, 16}, {20, 10, 0}, {6, 2, 3}}) {
      rc.rotary_dim = rot;
      rc.pairing = pairing;
      const RopeTable table = make_rope_table(rc, 40);
      const Tensor x = test::random_f32({7, 3, d}, d + rot);
      Tensor y = test::poisoned({7, 3, d});
      be->rope(x, table, 11, offset, y);
      const auto ref = naive_rope(x, rope_inv_freq(rc), rc.attention_factor,
                                  pairing == RopePairing::kInterleaved, 11, offset);
      EXPECT_LT(test::max_abs_diff(test::values(y), ref), 2e-5) << d << " " << rot << " " << offset;
      Tensor inplace = x.clone();
      be->rope(inplace, table, 11, offset, inplace);  // y may alias x
      EXPECT_EQ(test::max_abs_diff(test::values(inplace), test::values(y)), 0.0);
    }
  }
}

}  // namespace
}  // namespace refinery::backend
