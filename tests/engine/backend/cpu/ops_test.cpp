// rms_norm, embedding, add, swiglu, sigmoid_gate, copy_columns against naive loops.
#include <cmath>

#include "backend_test_util.hpp"

namespace refinery::backend {
namespace {

using test::max_abs_diff;
using test::random_f32;
using test::values;

TEST(CpuOps, RmsNormMatchesNaive) {
  auto be = make_cpu_backend();
  for (int64_t d : {1, 7, 33, 1000}) {
    const Tensor x = random_f32({13, d}, d, 3.0f);
    const Tensor w = test::convert(random_f32({d}, d + 1), DType::kBF16);
    Tensor y = test::poisoned({13, d});
    be->rms_norm(x, w, 1e-6f, y);
    std::vector<float> ref(static_cast<std::size_t>(13 * d));
    const auto wv = values(w);
    for (int64_t r = 0; r < 13; ++r) {
      double ss = 0;
      for (int64_t i = 0; i < d; ++i)
        ss += double(x.data<float>()[r * d + i]) * x.data<float>()[r * d + i];
      const double inv = 1.0 / std::sqrt(ss / d + 1e-6);
      for (int64_t i = 0; i < d; ++i)
        ref[r * d + i] = float(x.data<float>()[r * d + i] * inv * wv[i]);
    }
    EXPECT_LT(max_abs_diff(values(y), ref), 1e-5 * test::max_abs(ref));
  }
}

TEST(CpuOps, EmbeddingLooksUpRowsAndRejectsBadIds) {
  auto be = make_cpu_backend();
  const Tensor table = test::convert(random_f32({11, 5}, 1), DType::kBF16);
  const std::vector<int32_t> ids = {3, 0, 10, 3};
  Tensor y = test::poisoned({4, 5});
  be->embedding(Tensor::copy_of(DType::kI32, {4}, ids.data()), table, y);
  const auto tv = values(table);
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 5; ++i) EXPECT_EQ(y.data<float>()[t * 5 + i], tv[ids[t] * 5 + i]);
  const int32_t bad = 11;
  Tensor y1 = Tensor::empty(DType::kF32, {1, 5});
  try {
    be->embedding(Tensor::copy_of(DType::kI32, {1}, &bad), table, y1);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_NE(std::string(e.what()).find("token id 11"), std::string::npos);
  }
}

TEST(CpuOps, ElementwiseOps) {
  auto be = make_cpu_backend();
  const Tensor a = random_f32({9, 17}, 1), b = random_f32({9, 17}, 2), g = random_f32({9, 1}, 3);
  Tensor y = test::poisoned({9, 17});
  be->add(a, b, y);
  Tensor s = test::poisoned({9, 17});
  be->swiglu(a, b, s);
  Tensor sg = test::poisoned({9, 17});
  be->sigmoid_gate(a, g, sg);
  for (int i = 0; i < 9 * 17; ++i) {
    const float x = a.data<float>()[i], u = b.data<float>()[i], gt = g.data<float>()[i / 17];
    EXPECT_FLOAT_EQ(y.data<float>()[i], x + u);
    EXPECT_NEAR(s.data<float>()[i], x / (1 + std::exp(-x)) * u, 1e-6);
    EXPECT_NEAR(sg.data<float>()[i], x / (1 + std::exp(-gt)), 1e-6);
  }
  be->add(a, b, const_cast<Tensor&>(a));  // y may alias an input
  EXPECT_FLOAT_EQ(a.data<float>()[5], y.data<float>()[5]);
}

TEST(CpuOps, CopyColumnsAndRowGatherScatter) {
  auto be = make_cpu_backend();
  const Tensor src = random_f32({4, 10}, 1);
  Tensor dst = Tensor::zeros(DType::kF32, {4, 7});
  be->copy_columns(src, 6, dst, 2, 3);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 7; ++c)
      EXPECT_EQ(dst.data<float>()[r * 7 + c],
                (c >= 2 && c < 5) ? src.data<float>()[r * 10 + 6 + c - 2] : 0.0f);
  // Broadcast: each source row to 3 consecutive destination rows.
  Tensor wide = Tensor::zeros(DType::kF32, {12, 5});
  be->copy_columns(src, 1, wide, 1, 4);
  for (int r = 0; r < 12; ++r)
    for (int c = 0; c < 5; ++c)
      EXPECT_EQ(wide.data<float>()[r * 5 + c], c >= 1 ? src.data<float>()[(r / 3) * 10 + c] : 0.0f)
          << r << "," << c;
  Tensor uneven = Tensor::zeros(DType::kF32, {6, 5});
  EXPECT_THROW(be->copy_columns(src, 0, uneven, 0, 2), Error);  // 6 rows are not 4·n
  const std::vector<int32_t> rows = {2, 0, 2};
  const Tensor idx = Tensor::copy_of(DType::kI32, {3}, rows.data());
  Tensor g = test::poisoned({3, 10});
  be->gather_rows(src, idx, g);
  EXPECT_EQ(g.data<float>()[0 * 10 + 4], src.data<float>()[2 * 10 + 4]);
  EXPECT_EQ(g.data<float>()[1 * 10 + 9], src.data<float>()[0 * 10 + 9]);
  const std::vector<float> sc = {0.5f, 2.0f, -1.0f};
  Tensor acc = Tensor::zeros(DType::kF32, {4, 10});
  be->scatter_add_rows(g, idx, Tensor::copy_of(DType::kF32, {3}, sc.data()), acc);
  EXPECT_FLOAT_EQ(acc.data<float>()[2 * 10 + 1], -0.5f * src.data<float>()[2 * 10 + 1]);
  EXPECT_FLOAT_EQ(acc.data<float>()[0 * 10 + 1], 2.0f * src.data<float>()[1]);
  EXPECT_EQ(acc.data<float>()[1 * 10 + 1], 0.0f);
}

}  // namespace
}  // namespace refinery::backend
