// add_rms_norm (the residual add fused with the next RMSNorm) against add followed by rms_norm
// (bit for bit: the fused op must not change the CPU reference's numbers) and against a naive f64
// loop (the value itself), on awkward shapes; plus its argument checks.
#include <cmath>
#include <cstring>

#include "backend_test_util.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend {
namespace {

using test::max_abs_diff;
using test::random_f32;
using test::values;

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

struct Case {
  int64_t rows, d;
  DType weight_dtype;
  bool bf16_delta;  // delta values rounded to bf16 (what a bf16 block output holds), stored f32
};

TEST(CpuAddRmsNorm, EqualsAddThenRmsNormBitForBit) {
  auto be = make_cpu_backend();
  // 64 x 2048 takes the OpenMP path (rows * d > 2^15).
  const Case cases[] = {{7, 131, DType::kF32, false}, {7, 131, DType::kBF16, true},
                        {1, 1, DType::kF32, false},   {13, 1000, DType::kF16, true},
                        {3, 4, DType::kBF16, false},  {64, 2048, DType::kBF16, true}};
  for (const Case& c : cases) {
    const std::string what = str("[", c.rows, ", ", c.d, "] weight ", dtype_name(c.weight_dtype),
                                 c.bf16_delta ? " bf16-valued delta" : "");
    const Tensor x0 = random_f32({c.rows, c.d}, 10 + c.d, 3.0f);
    Tensor delta = random_f32({c.rows, c.d}, 20 + c.d, 0.5f);
    if (c.bf16_delta)
      delta = Tensor::copy_of(DType::kF32, {c.rows, c.d},
                              values(test::convert(delta, DType::kBF16)).data());
    const Tensor w = test::convert(random_f32({c.d}, 30 + c.d), c.weight_dtype);

    Tensor x_ref = x0.clone();
    Tensor out_ref = test::poisoned({c.rows, c.d});
    be->add(x_ref, delta, x_ref);
    be->rms_norm(x_ref, w, 1e-6f, out_ref);

    Tensor x = x0.clone();
    Tensor out = test::poisoned({c.rows, c.d});
    be->add_rms_norm(x, delta, w, 1e-6f, out);
    EXPECT_TRUE(same_bits(x, x_ref)) << what << ": x";
    EXPECT_TRUE(same_bits(out, out_ref)) << what << ": out";

    // The value itself, from a naive f64 loop over the f32 sums.
    const std::vector<float> xv = values(x0), dv = values(delta), wv = values(w);
    std::vector<float> sum(xv.size()), ref(xv.size());
    for (int64_t r = 0; r < c.rows; ++r) {
      double ss = 0.0;
      for (int64_t i = 0; i < c.d; ++i) {
        const std::size_t k = static_cast<std::size_t>(r * c.d + i);
        sum[k] = xv[k] + dv[k];
        ss += double(sum[k]) * sum[k];
      }
      const double inv = 1.0 / std::sqrt(ss / double(c.d) + 1e-6);
      for (int64_t i = 0; i < c.d; ++i) {
        const std::size_t k = static_cast<std::size_t>(r * c.d + i);
        ref[k] = float(sum[k] * inv * wv[static_cast<std::size_t>(i)]);
      }
    }
    EXPECT_EQ(max_abs_diff(values(x), sum), 0.0) << what;
    EXPECT_LT(max_abs_diff(values(out), ref), 1e-5 * test::max_abs(ref)) << what;
  }
}

TEST(CpuAddRmsNorm, OutMayAliasDeltaAndZeroRowsIsANoOp) {
  auto be = make_cpu_backend();
  const Tensor x0 = random_f32({5, 37}, 1, 2.0f);
  const Tensor delta = random_f32({5, 37}, 2);
  const Tensor w = random_f32({37}, 3);
  Tensor x_ref = x0.clone(), out_ref = test::poisoned({5, 37});
  be->add_rms_norm(x_ref, delta, w, 1e-5f, out_ref);
  Tensor x = x0.clone(), inplace = delta.clone();  // out aliases delta
  be->add_rms_norm(x, inplace, w, 1e-5f, inplace);
  EXPECT_TRUE(same_bits(x, x_ref));
  EXPECT_TRUE(same_bits(inplace, out_ref));

  Tensor empty_x = Tensor::empty(DType::kF32, {0, 37}), empty_out = test::poisoned({0, 37});
  be->add_rms_norm(empty_x, Tensor::empty(DType::kF32, {0, 37}), w, 1e-5f, empty_out);
}

TEST(CpuAddRmsNorm, RejectsBadArgumentsNamingTheOp) {
  auto be = make_cpu_backend();
  const Tensor w = random_f32({8}, 1);
  const auto rejects = [&](Tensor x, const Tensor& delta, const Tensor& weight, Tensor out,
                           const char* expected) {
    try {
      be->add_rms_norm(x, delta, weight, 1e-6f, out);
      ADD_FAILURE() << "accepted; expected an error containing '" << expected << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInternal) << e.what();
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  const auto f32 = [](std::vector<int64_t> s) { return Tensor::empty(DType::kF32, std::move(s)); };
  rejects(f32({3, 8}), f32({3, 7}), w, f32({3, 8}), "add_rms_norm delta");
  rejects(f32({3, 8}), f32({3, 8}), random_f32({9}, 2), f32({3, 8}), "add_rms_norm weight");
  rejects(f32({3, 8}), f32({3, 8}), w, f32({4, 8}), "add_rms_norm out");
  rejects(f32({24}), f32({24}), w, f32({24}), "add_rms_norm x");
  // The CPU backend computes in f32 only (like add): a bf16 block output is widened first.
  rejects(f32({3, 8}), Tensor::empty(DType::kBF16, {3, 8}), w, f32({3, 8}), "add_rms_norm delta");
  rejects(Tensor::empty(DType::kBF16, {3, 8}), f32({3, 8}), w, f32({3, 8}), "add_rms_norm x");
  // out over x's storage: x would be overwritten by the normed rows.
  Tensor x = f32({3, 8});
  rejects(x, f32({3, 8}), w, x, "overlaps x");
}

}  // namespace
}  // namespace refinery::backend
