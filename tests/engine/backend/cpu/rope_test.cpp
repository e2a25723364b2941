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

// segment_length L: one call over T = n·L rows equals n calls on the segments, each from
// first_position (bitwise: the same per-row arithmetic); so does rope_backward (adding and
// overwriting). The table need only cover first_position + L positions.
TEST(CpuRope, SegmentsEqualPerSegmentCalls) {
  auto be = make_cpu_backend();
  RopeConfig rc;
  rc.rotary_dim = 8;
  for (RopePairing pairing : {RopePairing::kHalfSplit, RopePairing::kInterleaved}) {
    rc.pairing = pairing;
    const RopeTable table = make_rope_table(rc, 9);  // first 5 + L 4: not 5 + T
    const int64_t t = 12, length = 4, first = 5, d = 12, offset = 2;
    const Tensor x = test::random_f32({t, 3, d}, 7);
    Tensor y = test::poisoned({t, 3, d});
    be->rope(x, table, first, offset, y, length);
    Tensor want = test::poisoned({t, 3, d});
    for (int64_t r0 = 0; r0 < t; r0 += length) {
      Tensor want_b = want.slice(r0, r0 + length);
      be->rope(x.slice(r0, r0 + length), table, first, offset, want_b);
    }
    EXPECT_EQ(test::max_abs_diff(test::values(y), test::values(want)), 0.0);
    Tensor inplace = x.clone();
    be->rope(inplace, table, first, offset, inplace, length);
    EXPECT_EQ(test::max_abs_diff(test::values(inplace), test::values(want)), 0.0);

    for (GradWrite write : {GradWrite::kAdd, GradWrite::kOverwrite}) {
      const Tensor dx0 = test::random_f32({t, 3, d}, 8);
      Tensor dx = dx0.clone(), dx_want = dx0.clone();
      be->rope_backward(x, table, first, offset, dx, write, length);
      for (int64_t r0 = 0; r0 < t; r0 += length) {
        Tensor b = dx_want.slice(r0, r0 + length);
        be->rope_backward(x.slice(r0, r0 + length), table, first, offset, b, write);
      }
      EXPECT_EQ(test::max_abs_diff(test::values(dx), test::values(dx_want)), 0.0);
    }
  }
}

TEST(CpuRope, SegmentLengthIsChecked) {
  auto be = make_cpu_backend();
  RopeConfig rc;
  rc.rotary_dim = 8;
  const RopeTable table = make_rope_table(rc, 8);
  const Tensor x = test::random_f32({12, 2, 8}, 1);
  Tensor y = test::poisoned({12, 2, 8});
  EXPECT_THROW(be->rope(x, table, 0, 0, y, 5), Error);   // does not divide T
  EXPECT_THROW(be->rope(x, table, 0, 0, y, -4), Error);  // negative
  EXPECT_THROW(be->rope(x, table, 5, 0, y, 4), Error);   // positions 5..8 exceed 8
  EXPECT_THROW(be->rope(x, table, 0, 0, y), Error);      // one segment: 12 positions
  EXPECT_NO_THROW(be->rope(x, table, 4, 0, y, 4));
  EXPECT_NO_THROW(be->rope(x, table, 0, 0, y, 6));
  Tensor dx = test::poisoned({12, 2, 8});
  EXPECT_THROW(be->rope_backward(x, table, 0, 0, dx, GradWrite::kOverwrite, 5), Error);
}

// mla_assemble_kv (the Backend default the CPU runs) vs a naive loop: nope keys and values from
// kv, the rope key from ckv's last dr columns rotated per segment (rope itself on a copy).
TEST(CpuMlaAssembleKv, MatchesNaiveAssemblyWithSegments) {
  auto be = make_cpu_backend();
  const int64_t t = 6, heads = 3, dn = 5, dv = 7, dr = 4, r = 3, length = 3, first = 2;
  RopeConfig rc;
  rc.rotary_dim = static_cast<int>(dr);
  rc.pairing = RopePairing::kInterleaved;
  const RopeTable table = make_rope_table(rc, first + length);
  const Tensor kv = test::random_f32({t, heads * (dn + dv)}, 1);
  const Tensor ckv = test::random_f32({t, r + dr}, 2);
  Tensor keys = test::poisoned({t, heads, dn + dr}), values = test::poisoned({t, heads, dv});
  be->mla_assemble_kv(kv, ckv, table, first, length, keys, values);

  Tensor k_pe = Tensor::empty(DType::kF32, {t, 1, dr});
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < dr; ++j)
      k_pe.mutable_data<float>()[i * dr + j] = ckv.data<float>()[i * (r + dr) + r + j];
  for (int64_t r0 = 0; r0 < t; r0 += length) {
    Tensor b = k_pe.slice(r0, r0 + length);
    be->rope(b, table, first, 0, b);
  }
  const float* pk = keys.data<float>();
  const float* pv = values.data<float>();
  const float* pkv = kv.data<float>();
  for (int64_t i = 0; i < t; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      const float* row = pkv + (i * heads + h) * (dn + dv);
      for (int64_t j = 0; j < dn; ++j)
        ASSERT_EQ(pk[(i * heads + h) * (dn + dr) + j], row[j]) << i << " " << h << " " << j;
      for (int64_t j = 0; j < dr; ++j)
        ASSERT_EQ(pk[(i * heads + h) * (dn + dr) + dn + j], k_pe.data<float>()[i * dr + j]);
      for (int64_t j = 0; j < dv; ++j) ASSERT_EQ(pv[(i * heads + h) * dv + j], row[dn + j]);
    }

  // Shapes that do not fit: dv from values, dn = keys' width - rotary_dim.
  Tensor bad_values = test::poisoned({t, heads, dv + 1});
  EXPECT_THROW(be->mla_assemble_kv(kv, ckv, table, first, length, keys, bad_values), Error);
  Tensor bad_keys = test::poisoned({t, heads, dn + dr + 1});
  EXPECT_THROW(be->mla_assemble_kv(kv, ckv, table, first, length, bad_keys, values), Error);
  const Tensor narrow_ckv = test::random_f32({t, dr - 2}, 3);
  EXPECT_THROW(be->mla_assemble_kv(kv, narrow_ckv, table, first, length, keys, values), Error);
  EXPECT_THROW(be->mla_assemble_kv(kv, ckv, table, first, 4, keys, values), Error);  // 4 ∤ 6
  EXPECT_THROW(be->mla_assemble_kv(kv, ckv, table, first + 1, length, keys, values), Error);
}

}  // namespace
}  // namespace refinery::backend
