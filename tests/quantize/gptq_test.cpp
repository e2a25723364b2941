// GPTQ rounding (src/quantize/gptq.hpp): against a numpy transcription of the algorithm
// (tests/fixtures/quantize/make_gptq_golden.py), and its properties (lower output error than RTN
// on correlated inputs, code range, the packed file's dequantization, dead inputs).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"
#include "engine/core/dtype.hpp"
#include "engine/eval/token_stream.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/model/transformer.hpp"
#include "quantize/awq.hpp"
#include "quantize/awq_pack.hpp"
#include "quantize/gptq.hpp"
#include "quantize/quantized_model_writer.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::quantize {
namespace {

const std::string kGolden =
    std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/quantize/gptq_golden.safetensors";

struct Golden {
  io::SafetensorsFile file = io::SafetensorsFile::open(kGolden);
  template <typename T>
  std::vector<T> raw(const std::string& name) const {
    const io::TensorEntry* e = file.find(name);
    EXPECT_NE(e, nullptr) << name;
    if (e == nullptr) return {};
    const auto bytes = file.bytes(*e);
    EXPECT_EQ(bytes.size(), e->num_elements() * sizeof(T)) << name;
    std::vector<T> v(e->num_elements());
    std::memcpy(v.data(), bytes.data(), v.size() * sizeof(T));
    return v;
  }
};

constexpr int64_t kOut = 16, kIn = 128, kRows = 200;

struct GoldenCase {
  std::string key;
  GroupQuantSpec spec;
  GptqOptions options;
};

// ||X·Wᵀ − X·Qᵀ||² (x [n, in], w and q [out, in]).
double output_error(const std::vector<float>& x, int64_t n, const std::vector<float>& w,
                    const std::vector<float>& q, int64_t out, int64_t in) {
  double total = 0.0;
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double d = 0.0;
      for (int64_t i = 0; i < in; ++i)
        d += static_cast<double>(x[r * in + i]) * (w[o * in + i] - q[o * in + i]);
      total += d * d;
    }
  return total;
}

std::vector<double> hessian_of(const std::vector<float>& x, int64_t n, int64_t in) {
  HessianAccumulator acc(in);
  acc.add(x.data(), n);
  return acc.hessian();
}

TEST(Gptq, MatchesTheNumpyTranscriptionExactly) {
  const Golden g;
  const auto w = g.raw<float>("w");
  const auto h = g.raw<double>("h");
  ASSERT_EQ(w.size(), static_cast<std::size_t>(kOut * kIn));
  ASSERT_EQ(h.size(), static_cast<std::size_t>(kIn * kIn));
  const std::vector<GoldenCase> cases = {
      {"b4_g32_asym_blk64", {4, 32, true}, {0.01, 64, false}},
      {"b3_g32_sym_blk64", {3, 32, false}, {0.01, 64, false}},
      {"b4_g64_asym_blk128_static", {4, 64, true}, {0.01, 128, true}},
      {"b3_g128_asym_blk128", {3, 128, true}, {0.01, 128, false}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.key);
    GptqStats stats;
    const QuantizedMatrix q = gptq_quantize(w.data(), kOut, kIn, h, c.spec, c.options, c.key, &stats);
    EXPECT_EQ(stats.dead_columns, 1);
    EXPECT_EQ(stats.damp_used, 0.01);
    const auto codes = g.raw<uint8_t>(c.key + ".codes");
    const auto zeros = g.raw<uint8_t>(c.key + ".zeros");
    const auto scales = g.raw<float>(c.key + ".scales");
    ASSERT_EQ(q.codes.size(), codes.size());
    int64_t code_mismatch = 0;
    for (std::size_t i = 0; i < codes.size(); ++i) code_mismatch += q.codes[i] != codes[i];
    EXPECT_EQ(code_mismatch, 0);
    EXPECT_EQ(q.zeros, zeros);
    EXPECT_EQ(q.scales, scales);
  }
}

TEST(Gptq, HessianAccumulatorMatchesTheScriptsH) {
  const Golden g;
  const auto x = g.raw<float>("x");
  const auto h_ref = g.raw<double>("h");
  HessianAccumulator acc(kIn);
  acc.add(x.data(), 150);  // two calls: the sum must not depend on how rows arrive
  acc.add(x.data() + 150 * kIn, kRows - 150);
  EXPECT_EQ(acc.rows(), kRows);
  const auto h = acc.hessian();
  for (std::size_t i = 0; i < h.size(); ++i)
    ASSERT_NEAR(h[i], h_ref[i], 1e-5 * (1.0 + std::fabs(h_ref[i]))) << i;  // f32 GEMM per batch
}

// Correlated inputs: a few latent factors mixed into every channel, plus noise.
struct Synthetic {
  int64_t n = 512, out = 64, in = 256;
  std::vector<float> x, w;
  explicit Synthetic(uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int64_t k = 8;
    std::vector<float> base(static_cast<std::size_t>(n * k)), mix(static_cast<std::size_t>(k * in));
    for (auto& v : base) v = nd(rng);
    for (auto& v : mix) v = nd(rng);
    x.resize(static_cast<std::size_t>(n * in));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < in; ++i) {
        float v = 0.2f * nd(rng);
        for (int64_t j = 0; j < k; ++j) v += 0.5f * base[r * k + j] * mix[j * in + i];
        x[r * in + i] = v;
      }
    w.resize(static_cast<std::size_t>(out * in));
    for (auto& v : w) v = 0.05f * nd(rng);
  }
};

TEST(Gptq, LowerOutputErrorThanRtnWithTheSameGroups) {
  const Synthetic s(7);
  const auto h = hessian_of(s.x, s.n, s.in);
  for (const int bits : {3, 4}) {
    for (const bool zp : {true, false}) {
      SCOPED_TRACE("bits " + std::to_string(bits) + (zp ? " asym" : " sym"));
      const GroupQuantSpec spec{bits, 128, zp};
      const auto rtn = dequantize(quantize_groups(s.w.data(), s.out, s.in, spec));
      const auto gq = dequantize(gptq_quantize(s.w.data(), s.out, s.in, h, spec));
      const double e_rtn = output_error(s.x, s.n, s.w, rtn, s.out, s.in);
      const double e_gptq = output_error(s.x, s.n, s.w, gq, s.out, s.in);
      EXPECT_LT(e_gptq, 0.7 * e_rtn) << "rtn " << e_rtn << " gptq " << e_gptq;
      const auto gs = dequantize(gptq_quantize(s.w.data(), s.out, s.in, h, spec, {0.01, 128, true}));
      EXPECT_LT(output_error(s.x, s.n, s.w, gs, s.out, s.in), e_rtn);
    }
  }
}

TEST(Gptq, CodesInRangeAndThePackedFileDequantizesToTheSameWeights) {
  const Synthetic s(11);
  const auto h = hessian_of(s.x, s.n, s.in);
  for (const int bits : {3, 4, 8}) {
    const GroupQuantSpec spec{bits, 64, true};
    const QuantizedMatrix q = gptq_quantize(s.w.data(), s.out, s.in, h, spec);
    for (const uint8_t c : q.codes) ASSERT_LE(c, (1 << bits) - 1);
    for (const uint8_t z : q.zeros) ASSERT_LE(z, (1 << bits) - 1);
    for (const float sc : q.scales) ASSERT_EQ(sc, f16_to_f32(f32_to_f16(sc)));
    const QuantizedMatrix back = unpack_awq(pack_awq(q));
    EXPECT_EQ(back.codes, q.codes);
    EXPECT_EQ(dequantize(back), dequantize(q));
  }
}

TEST(Gptq, DiagonalHessianIsPlainRtn) {
  // No correlations: no error can be compensated, GPTQ must round exactly like quantize_groups.
  const Synthetic s(3);
  std::vector<double> h(static_cast<std::size_t>(s.in * s.in), 0.0);
  for (int64_t i = 0; i < s.in; ++i) h[static_cast<std::size_t>(i * s.in + i)] = 1.0 + 0.01 * i;
  for (const bool zp : {true, false}) {
    const GroupQuantSpec spec{4, 128, zp};
    const QuantizedMatrix a = quantize_groups(s.w.data(), s.out, s.in, spec);
    const QuantizedMatrix b = gptq_quantize(s.w.data(), s.out, s.in, h, spec);
    EXPECT_EQ(a.codes, b.codes);
    EXPECT_EQ(a.scales, b.scales);
    EXPECT_EQ(a.zeros, b.zeros);
  }
}

TEST(Gptq, DeadInputColumnQuantizesToZeroAndDoesNotBreakTheRest) {
  Synthetic s(5);
  for (int64_t r = 0; r < s.n; ++r) s.x[r * s.in + 17] = 0.0f;  // input 17 never fires
  for (int64_t o = 0; o < s.out; ++o) s.w[o * s.in + 17] = 0.3f;  // a large weight that cannot matter
  const auto h = hessian_of(s.x, s.n, s.in);
  const GroupQuantSpec spec{4, 128, true};
  GptqStats stats;
  const auto deq = dequantize(gptq_quantize(s.w.data(), s.out, s.in, h, spec, {}, "w", &stats));
  EXPECT_EQ(stats.dead_columns, 1);
  for (int64_t o = 0; o < s.out; ++o) EXPECT_FLOAT_EQ(deq[o * s.in + 17], 0.0f) << o;
  for (const float v : deq) ASSERT_TRUE(std::isfinite(v));
  const auto rtn = dequantize(quantize_groups(s.w.data(), s.out, s.in, spec));
  EXPECT_LT(output_error(s.x, s.n, s.w, deq, s.out, s.in),
            output_error(s.x, s.n, s.w, rtn, s.out, s.in));
}

TEST(Gptq, RejectsShapesTheGroupsDoNotDivide) {
  const std::vector<float> w(16 * 96, 0.1f);
  const std::vector<double> h(96 * 96, 0.0);
  const std::string msg = test::error_message_of(
      [&] { gptq_quantize(w.data(), 16, 96, h, GroupQuantSpec{4, 64, true}, {}, "layers.0.x"); });
  EXPECT_NE(msg.find("layers.0.x"), std::string::npos) << msg;
  EXPECT_NE(msg.find("group size 64"), std::string::npos) << msg;
}

// The AWQ hook (AwqOptions::gptq) on the trained MoE teacher: the same scaling decisions, and the
// written file's layer 0 (dequantized from qweight/qzeros/scales) is closer to the dense layer 0
// on the calibration tokens than AWQ with round-to-nearest.
TEST(GptqAwq, SameScalesAndLowerLayerErrorThanAwqRtn) {
  const std::string teacher = std::string(REFINERY_SOURCE_DIR) + "/models/refinery-teacher-moe";
  constexpr int64_t kLength = 64, kWindows = 8;
  const std::vector<int32_t> stream =
      eval::read_token_stream({std::string(REFINERY_SOURCE_DIR) + "/data/sample/valid-200k.jsonl"},
                              eval::lazy_tokenizer_encoder(teacher, true))
          .tokens;
  ASSERT_GE(static_cast<int64_t>(stream.size()), kLength * kWindows);
  const std::vector<int32_t> tokens(stream.begin(), stream.begin() + kLength * kWindows);
  const GroupQuantSpec spec{3, 64, true};
  test::ScratchDir dir;
  auto run = [&](bool gptq, const std::string& out) {
    auto model = model::Transformer::load(teacher, backend::make_cpu_backend(0));
    AwqOptions options;
    options.spec = spec;
    options.grid = 2;
    options.clip = false;  // saves time; GPTQ does not depend on it
    options.gptq = gptq;
    AwqResult r = quantize_awq(*model, tokens, kWindows, options);
    write_quantized_model(teacher, out, r.parts, spec, {{"pass", "test"}});
    return r;
  };
  const AwqResult rtn = run(false, dir.file("rtn"));
  const AwqResult gq = run(true, dir.file("gptq"));
  ASSERT_EQ(rtn.groups.size(), gq.groups.size());
  for (std::size_t i = 0; i < rtn.groups.size(); ++i) {
    EXPECT_EQ(rtn.groups[i].ratio, gq.groups[i].ratio) << rtn.groups[i].name;
  }
  ASSERT_EQ(rtn.parts.quantized.size(), gq.parts.quantized.size());
  EXPECT_EQ(rtn.parts.not_converted, gq.parts.not_converted);

  auto dense = model::Transformer::load(teacher, backend::make_cpu_backend(0));
  const auto n = static_cast<int64_t>(tokens.size());
  Tensor x0 = Tensor::empty(DType::kF32, {n, dense->config().hidden_size});
  dense->backend().embedding(Tensor::copy_of(DType::kI32, {n}, tokens.data()),
                             dense->weights().embed_tokens, x0);
  auto layer0 = [&](model::Transformer& m) {
    model::KvCache cache = m.make_cache(n);
    return m.layer_forward(0, x0, kWindows, cache).to_f32();
  };
  const Tensor want = layer0(*dense);
  auto error_of = [&](const std::string& d) {
    auto m = model::Transformer::load(d, backend::make_cpu_backend(0));
    const Tensor got = layer0(*m);
    double e = 0.0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      const double diff = double(got.data<float>()[i]) - double(want.data<float>()[i]);
      e += diff * diff;
    }
    return e;
  };
  const double e_rtn = error_of(dir.file("rtn")), e_gptq = error_of(dir.file("gptq"));
  RecordProperty("layer0_error_rtn", std::to_string(e_rtn));
  RecordProperty("layer0_error_gptq", std::to_string(e_gptq));
  EXPECT_LT(e_gptq, 0.9 * e_rtn) << "AWQ+RTN " << e_rtn << ", AWQ+GPTQ " << e_gptq;
}

}  // namespace
}  // namespace refinery::quantize
