// Group quantization (src/quantize/group_quant.hpp) against references made by PyTorch
// (tests/fixtures/quantize/make_group_quant_golden.py: AutoAWQ's pseudo_quantize_tensor semantics
// with fp16 scales) and packing (awq_pack.hpp) against numpy's AutoAWQ GEMM packing.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/awq_dequant.hpp"
#include "engine/backend/cpu/cpu_backend.hpp"
#include "engine/io/safetensors_file.hpp"
#include "quantize/awq_pack.hpp"
#include "quantize/group_quant.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::quantize {
namespace {

const std::string kGolden =
    std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/quantize/group_quant_golden.safetensors";

struct Golden {
  io::SafetensorsFile file = io::SafetensorsFile::open(kGolden);
  template <typename T>
  std::vector<T> get(const std::string& name) const {
    const io::TensorEntry* e = file.find(name);
    EXPECT_NE(e, nullptr) << name;
    if (e == nullptr) return {};
    const auto bytes = file.bytes(*e);
    if constexpr (std::is_same_v<T, float>) {
      std::vector<float> v(e->num_elements());
      convert_to_f32(e->dtype, bytes.data(), v.data(), v.size());
      return v;
    } else {
      EXPECT_EQ(bytes.size(), e->num_elements() * sizeof(T)) << name;
      std::vector<T> v(e->num_elements());
      std::memcpy(v.data(), bytes.data(), bytes.size());
      return v;
    }
  }
  std::vector<int64_t> shape(const std::string& name) const { return file.find(name)->shape; }
};

struct Case {
  int bits, group;
  bool sym;
  std::string key() const {
    return "b" + std::to_string(bits) + "_g" + std::to_string(group) + (sym ? "_sym" : "_asym");
  }
};

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int b : {3, 4, 8})
    for (int g : {32, 64, 128})
      for (bool s : {false, true}) cases.push_back({b, g, s});
  return cases;
}

GroupQuantSpec spec_of(const Case& c) { return GroupQuantSpec{c.bits, c.group, !c.sym}; }

TEST(GroupQuant, FakeQuantizeMatchesTorchReferenceBitForBit) {
  const Golden golden;
  const std::vector<float> input = golden.get<float>("input");
  const auto shape = golden.shape("input");
  for (const Case& c : all_cases()) {
    std::vector<float> w = input;
    fake_quantize(w.data(), shape[0], shape[1], spec_of(c));
    const std::vector<float> ref = golden.get<float>(c.key() + ".fake");
    ASSERT_EQ(w.size(), ref.size());
    int64_t mismatches = 0;
    for (std::size_t i = 0; i < w.size(); ++i)
      if (w[i] != ref[i] && mismatches++ < 3)
        ADD_FAILURE() << c.key() << " element " << i << ": " << w[i] << " vs torch " << ref[i];
    EXPECT_EQ(mismatches, 0) << c.key();
  }
}

TEST(GroupQuant, CodesZerosScalesMatchTorchAndDequantizeEqualsFakeQuantize) {
  const Golden golden;
  const std::vector<float> input = golden.get<float>("input");
  const auto shape = golden.shape("input");
  for (const Case& c : all_cases()) {
    const QuantizedMatrix q = quantize_groups(input.data(), shape[0], shape[1], spec_of(c));
    EXPECT_EQ(q.codes, golden.get<uint8_t>(c.key() + ".codes")) << c.key();
    EXPECT_EQ(q.zeros, golden.get<uint8_t>(c.key() + ".zeros")) << c.key();
    EXPECT_EQ(q.scales, golden.get<float>(c.key() + ".scales")) << c.key();
    EXPECT_EQ(dequantize(q), golden.get<float>(c.key() + ".fake")) << c.key();
  }
}

TEST(AwqPack, PackedWordsEqualNumpyPackingOfTheAutoAwqOrder) {
  const Golden golden;
  const std::vector<float> input = golden.get<float>("input");
  const auto shape = golden.shape("input");
  for (const Case& c : all_cases()) {
    const QuantizedMatrix q = quantize_groups(input.data(), shape[0], shape[1], spec_of(c));
    const backend::AwqWeight w = pack_awq(q);
    const int pack = backend::awq_pack_factor(c.bits);
    ASSERT_EQ(w.qweight.shape(), (std::vector<int64_t>{shape[1], shape[0] / pack})) << c.key();
    ASSERT_EQ(w.qzeros.shape(), (std::vector<int64_t>{shape[1] / c.group, shape[0] / pack}));
    ASSERT_EQ(w.scales.shape(), (std::vector<int64_t>{shape[1] / c.group, shape[0]}));
    const auto* qw = w.qweight.data<int32_t>();
    const auto* qz = w.qzeros.data<int32_t>();
    EXPECT_EQ(std::vector<int32_t>(qw, qw + w.qweight.numel()),
              golden.get<int32_t>(c.key() + ".qweight")) << c.key();
    EXPECT_EQ(std::vector<int32_t>(qz, qz + w.qzeros.numel()),
              golden.get<int32_t>(c.key() + ".qzeros")) << c.key();
  }
}

TEST(AwqPack, UnpackInvertsPackAndEngineDequantMatchesReference) {
  const Golden golden;
  const std::vector<float> input = golden.get<float>("input");
  const auto shape = golden.shape("input");
  for (const Case& c : all_cases()) {
    const QuantizedMatrix q = quantize_groups(input.data(), shape[0], shape[1], spec_of(c));
    const backend::AwqWeight w = pack_awq(q);
    const QuantizedMatrix back = unpack_awq(w);
    EXPECT_EQ(back.codes, q.codes) << c.key();
    EXPECT_EQ(back.zeros, q.zeros) << c.key();
    EXPECT_EQ(back.scales, q.scales) << c.key();
    // The engine's tile dequantization, on an awkward row range (a word boundary inside).
    const std::vector<float> ref = golden.get<float>(c.key() + ".fake");
    const int64_t pack = backend::awq_pack_factor(c.bits), r0 = pack / 2 + 1, n = shape[0] - r0 - 1;
    std::vector<float> rows(static_cast<std::size_t>(n * shape[1]));
    backend::awq_dequantize_rows(w, r0, n, rows.data());
    EXPECT_EQ(rows, std::vector<float>(ref.begin() + r0 * shape[1], ref.begin() + (r0 + n) * shape[1]))
        << c.key();
  }
}

TEST(AwqPack, RandomRoundTripOnLargerMatrices) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 0.1f);
  for (int bits : {3, 4, 8}) {
    const int64_t out = 72, in = 384;
    std::vector<float> w(out * in);
    for (float& x : w) x = dist(rng);
    const QuantizedMatrix q = quantize_groups(w.data(), out, in, {bits, 128, true});
    const QuantizedMatrix back = unpack_awq(pack_awq(q));
    EXPECT_EQ(back.codes, q.codes) << bits;
    EXPECT_EQ(dequantize(back), dequantize(q)) << bits;
    std::vector<float> fq = w;
    fake_quantize(fq.data(), out, in, {bits, 128, true});
    EXPECT_EQ(fq, dequantize(q)) << bits;
    for (uint8_t code : q.codes) ASSERT_LT(code, 1 << bits);
  }
}

TEST(GroupQuant, UsableGroupSizeFallsBackToTheLargestDividingMultipleOf32) {
  EXPECT_EQ(usable_group_size(256, 64, {4, 128, true}), 128);
  EXPECT_EQ(usable_group_size(160, 64, {4, 128, true}), 32);   // 160 = 5 x 32
  EXPECT_EQ(usable_group_size(192, 64, {4, 128, true}), 64);
  EXPECT_EQ(usable_group_size(64, 64, {4, 32, true}), 32);
  EXPECT_EQ(usable_group_size(48, 64, {4, 128, true}), 0);    // no multiple of 32 divides 48
  EXPECT_EQ(usable_group_size(88, 64, {4, 128, true}), 0);
  EXPECT_EQ(usable_group_size(128, 44, {4, 128, true}), 0);   // out not a multiple of 8
  EXPECT_EQ(usable_group_size(128, 44, {8, 128, true}), 128); // 8 bits: 4 per word
  EXPECT_EQ(usable_group_size(128, 42, {8, 128, true}), 0);
}

TEST(GroupQuant, BadInputsAreUserErrors) {
  std::vector<float> w(8 * 96, 0.5f);
  EXPECT_NE(test::error_message_of([&] { fake_quantize(w.data(), 8, 96, {4, 64, true}, "layer.x"); })
                .find("layer.x"),
            std::string::npos);
  EXPECT_NE(test::error_message_of([&] { quantize_groups(w.data(), 8, 96, {5, 32, true}); })
                .find("bits"),
            std::string::npos);
  EXPECT_NE(test::error_message_of([&] { quantize_groups(w.data(), 8, 96, {4, 48, true}); })
                .find("group size"),
            std::string::npos);
  w[100] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NE(test::error_message_of([&] { quantize_groups(w.data(), 8, 96, {4, 32, true}, "m.q"); })
                .find("non-finite"),
            std::string::npos);
}

}  // namespace
}  // namespace refinery::quantize

// ---- Backend::group_fake_quantize (AWQ's search on the device): the CPU op is the reference
// fake_quantize applied to w·diag(s), then divided by s. ----
namespace refinery::quantize {
namespace {

TEST(GroupFakeQuantizeOp, CpuOpIsScaledFakeQuantize) {
  auto be = backend::make_cpu_backend(1);
  const int64_t rows = 5, cols = 192;
  std::mt19937 rng(3);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.25f, 4.0f);
  std::vector<float> w(rows * cols), s(cols);
  for (auto& v : w) v = n01(rng);
  for (auto& v : s) v = u(rng);
  for (int bits : {3, 4, 8})
    for (bool zp : {true, false}) {
      GroupQuantSpec spec;
      spec.bits = bits;
      spec.group_size = 64;
      spec.zero_point = zp;
      std::vector<float> want = w;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) want[r * cols + c] *= s[c];
      fake_quantize(want.data(), rows, cols, spec);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) want[r * cols + c] /= s[c];
      Tensor out = Tensor::empty(DType::kF32, {rows, cols});
      be->group_fake_quantize(Tensor::copy_of(DType::kF32, {rows, cols}, w.data()),
                              Tensor::copy_of(DType::kF32, {cols}, s.data()), {bits, 64, zp, 1.0f},
                              out);
      for (int64_t i = 0; i < rows * cols; ++i)
        ASSERT_EQ(out.data<float>()[i], want[i]) << "bits " << bits << " zp " << zp << " at " << i;
    }
}

// The clip search's ops on the CPU: a clamp to ±ratio·max|w| per group before quantizing, and
// err[o, g] = mean_t (x_g · (q − w)_gᵀ)² against a double loop.
TEST(GroupFakeQuantizeOp, ClipAndOutputErrors) {
  auto be = backend::make_cpu_backend(1);
  const int64_t rows = 3, cols = 64, n = 5;
  std::mt19937 rng(4);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> w(rows * cols), x(n * cols);
  for (auto& v : w) v = n01(rng);
  for (auto& v : x) v = n01(rng);
  GroupQuantSpec spec;
  spec.group_size = 32;
  std::vector<float> want = w;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c0 = 0; c0 < cols; c0 += 32) {
      float m = 0.0f;
      for (int64_t c = c0; c < c0 + 32; ++c) m = std::max(m, std::fabs(w[r * cols + c]));
      m *= 0.6f;
      for (int64_t c = c0; c < c0 + 32; ++c)
        want[r * cols + c] = std::clamp(w[r * cols + c], -m, m);
    }
  fake_quantize(want.data(), rows, cols, spec);
  const Tensor wt = Tensor::copy_of(DType::kF32, {rows, cols}, w.data());
  Tensor q = Tensor::empty(DType::kF32, {rows, cols});
  be->group_fake_quantize(wt, Tensor(), {4, 32, true, 0.6f}, q);
  for (int64_t i = 0; i < rows * cols; ++i) ASSERT_EQ(q.data<float>()[i], want[i]) << i;

  Tensor err = Tensor::empty(DType::kF32, {rows, 2});
  be->group_output_errors(Tensor::copy_of(DType::kF32, {n, cols}, x.data()), q, wt, 32, err);
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t g = 0; g < 2; ++g) {
      double e = 0.0;
      for (int64_t t = 0; t < n; ++t) {
        double dot = 0.0;
        for (int64_t c = g * 32; c < (g + 1) * 32; ++c)
          dot += double(x[t * cols + c]) * (double(want[o * cols + c]) - double(w[o * cols + c]));
        e += dot * dot;
      }
      EXPECT_NEAR(err.data<float>()[o * 2 + g], e / n, 1e-5 * e / n + 1e-8) << o << " " << g;
    }
}

}  // namespace
}  // namespace refinery::quantize
