#include <cstring>

#include "backend_test_util.hpp"
#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend {
namespace {

using test::convert;
using test::max_abs_diff;
using test::random_f32;
using test::values;

// y = x Wᵀ + b with double accumulation over f32 values of W.
std::vector<float> naive_linear(const Tensor& x, const std::vector<float>& w, int64_t out,
                                const std::vector<float>& bias) {
  const int64_t t = x.size(0), in = x.size(1);
  const float* px = x.data<float>();
  std::vector<float> y(static_cast<std::size_t>(t * out));
  for (int64_t r = 0; r < t; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias.empty() ? 0.0 : bias[o];
      for (int64_t i = 0; i < in; ++i) acc += static_cast<double>(px[r * in + i]) * w[o * in + i];
      y[r * out + o] = static_cast<float>(acc);
    }
  return y;
}

class LinearDtype : public ::testing::TestWithParam<DType> {};

TEST_P(LinearDtype, MatchesNaiveLoopOnAwkwardShapes) {
  auto be = make_cpu_backend();
  for (const auto& [t, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
           {1, 37, 45}, {7, 37, 45}, {23, 130, 389}, {65, 3, 1}, {2, 1000, 33}}) {
    const Tensor x = random_f32({t, in}, 1 + t);
    const Tensor w = convert(random_f32({out, in}, 2 + out), GetParam());
    const Tensor b = random_f32({out}, 3);
    for (bool with_bias : {false, true}) {
      LinearWeight lw{DenseWeight{w}, with_bias ? b : Tensor(), "test"};
      Tensor y = test::poisoned({t, out});
      be->linear(x, lw, y);
      const auto ref =
          naive_linear(x, values(w), out, with_bias ? values(b) : std::vector<float>{});
      EXPECT_LT(max_abs_diff(values(y), ref), 2e-5 * std::sqrt(double(in)) * 4)
          << dtype_name(GetParam()) << " t=" << t << " in=" << in << " out=" << out;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(CpuLinear, LinearDtype,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16));

// FP8 block: dequantize (w8 * scale per block) then matmul, with partial edge blocks.
TEST(CpuLinear, Fp8BlockMatchesDequantizeThenMatmul) {
  auto be = make_cpu_backend();
  struct Case {
    int64_t t, in, out;
    int bo, bi;
  };
  for (const Case c : {Case{5, 160, 200, 128, 128}, Case{1, 37, 45, 16, 8},
                       Case{9, 300, 129, 128, 128}, Case{3, 20, 13, 4, 7}}) {
    const Tensor x = random_f32({c.t, c.in}, 11);
    const Tensor w8 = convert(random_f32({c.out, c.in}, 12, 30.0f), DType::kF8E4M3);
    const int64_t rows = (c.out + c.bo - 1) / c.bo, cols = (c.in + c.bi - 1) / c.bi;
    Tensor scale = random_f32({rows, cols}, 13);
    for (int64_t i = 0; i < scale.numel(); ++i)
      scale.mutable_data<float>()[i] = 0.01f + std::abs(scale.data<float>()[i]) * 0.02f;
    Fp8BlockWeight f{w8, scale, c.bo, c.bi};
    validate_fp8_block(f, "test");
    // Dequantize independently.
    const std::vector<float> q = values(w8);
    std::vector<float> deq(q.size());
    for (int64_t r = 0; r < c.out; ++r)
      for (int64_t k = 0; k < c.in; ++k)
        deq[r * c.in + k] = q[r * c.in + k] * scale.data<float>()[(r / c.bo) * cols + k / c.bi];
    Tensor y = test::poisoned({c.t, c.out});
    be->linear(x, LinearWeight{f, Tensor(), "fp8"}, y);
    const auto ref = naive_linear(x, deq, c.out, {});
    EXPECT_LT(max_abs_diff(values(y), ref), 1e-4 * test::max_abs(ref) + 1e-6)
        << c.t << " " << c.in << " " << c.out << " blocks " << c.bo << "x" << c.bi;
  }
}

// Every E4M3 code (incl. subnormals, ±0, ±448) through the FP8 path equals the exact conversion.
TEST(CpuLinear, Fp8DecodesEveryCodeExactly) {
  auto be = make_cpu_backend();
  Tensor w8 = Tensor::empty(DType::kF8E4M3, {256, 1});
  for (int b = 0; b < 256; ++b) w8.mutable_data<uint8_t>()[b] = static_cast<uint8_t>(b);
  const float one = 1.0f;
  Tensor y = test::poisoned({1, 256});
  be->linear(Tensor::copy_of(DType::kF32, {1, 1}, &one),
             LinearWeight{Fp8BlockWeight{w8, Tensor::zeros(DType::kF32, {2, 1})}, {}, "z"}, y);
  // scale 0 gives 0 (or NaN for NaN codes); with scale 1:
  Tensor ones = Tensor::empty(DType::kF32, {2, 1});
  ones.mutable_data<float>()[0] = ones.mutable_data<float>()[1] = 1.0f;
  be->linear(Tensor::copy_of(DType::kF32, {1, 1}, &one),
             LinearWeight{Fp8BlockWeight{w8, ones}, {}, "one"}, y);
  for (int b = 0; b < 256; ++b) {
    const float want = f8e4m3_to_f32(static_cast<uint8_t>(b)), got = y.data<float>()[b];
    if (std::isnan(want))
      EXPECT_TRUE(std::isnan(got)) << b;
    else
      EXPECT_EQ(got, want) << "code " << b;
  }
}

TEST(CpuLinear, Fp8ScaleGridMismatchIsAUserError) {
  const Tensor w8 = convert(random_f32({200, 160}, 1), DType::kF8E4M3);
  Fp8BlockWeight f{w8, Tensor::zeros(DType::kF32, {1, 2}), 128, 128};
  try {
    validate_fp8_block(f, "model.layers.0.mlp.up_proj");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_NE(std::string(e.what()).find("f32[2, 2]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.up_proj"), std::string::npos)
        << e.what();
  }
}

TEST(CpuLinear, LinearWeightDescribesItself) {
  const Tensor w8 = convert(random_f32({3, 5}, 1), DType::kF8E4M3);
  EXPECT_EQ(
      (LinearWeight{Fp8BlockWeight{w8, Tensor::zeros(DType::kF32, {1, 1})}, {}, "x"}).describe(),
      "fp8-block128x128[3, 5]");
  LinearWeight d{DenseWeight{convert(random_f32({3, 5}, 1), DType::kBF16)}, {}, "y"};
  EXPECT_EQ(d.out_features(), 3);
  EXPECT_EQ(d.in_features(), 5);
}

}  // namespace
}  // namespace refinery::backend
