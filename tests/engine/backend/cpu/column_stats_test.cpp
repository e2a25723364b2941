// Backend::column_abs_sums on the CPU against a plain double loop: awkward shapes, f32 and bf16
// inputs, accumulation over calls, independence from the thread count, argument checks.
#include <cmath>
#include <random>
#include <vector>

#include "backend_test_util.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend {
namespace {

// x [n, cols] with N(0, 1) values (a few large ones), rounded to `dtype`.
Tensor random_input(int64_t n, int64_t cols, DType dtype, uint64_t seed) {
  Tensor x = test::random_f32({n, cols}, seed, 1.0f);
  float* p = x.mutable_data<float>();
  for (int64_t i = 0; i < x.numel(); i += 97) p[i] *= 300.0f;  // outlier channels, as in LLMs
  return dtype == DType::kF32 ? x : test::convert(x, dtype);
}

// The reference: per column, |x| summed over the rows in order in double, then added to the
// previous value of sums and rounded to f32 once (the documented contract).
std::vector<float> reference(const Tensor& x, const std::vector<float>& start) {
  const std::vector<float> v = test::values(x);
  const int64_t n = x.size(0), cols = x.size(1);
  std::vector<float> out(start);
  for (int64_t c = 0; c < cols; ++c) {
    double s = 0.0;
    for (int64_t r = 0; r < n; ++r) s += std::fabs(static_cast<double>(v[r * cols + c]));
    out[c] = static_cast<float>(static_cast<double>(start[c]) + s);
  }
  return out;
}

std::vector<float> run(Backend& be, const Tensor& x, const std::vector<float>& start) {
  Tensor sums = Tensor::copy_of(DType::kF32, {static_cast<int64_t>(start.size())}, start.data());
  be.column_abs_sums(x, sums);
  return test::values(sums);
}

TEST(ColumnAbsSums, MatchesDoubleLoopOnAwkwardShapes) {
  auto be = make_cpu_backend(3);
  uint64_t seed = 100;
  for (const DType dtype : {DType::kF32, DType::kBF16})
    for (const int64_t n : {1, 37, 1000})
      for (const int64_t cols : {1, 13, 4099}) {
        const Tensor x = random_input(n, cols, dtype, ++seed);
        const std::vector<float> zero(static_cast<std::size_t>(cols), 0.0f);
        const std::vector<float> got = run(*be, x, zero), want = reference(x, zero);
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(got[c], want[c]) << dtype_name(dtype) << " n " << n << " cols " << cols
                                     << " column " << c;
        // Sanity of the reference itself: a mean |x| of N(0, 1) data is about 0.8 (more with
        // the outliers), so the sums cannot all be zero or garbage.
        double total = 0.0;
        for (float v : want) total += v;
        EXPECT_GT(total / static_cast<double>(n * cols), 0.5);
      }
}

TEST(ColumnAbsSums, AccumulatesOverCalls) {
  auto be = make_cpu_backend(2);
  for (const DType dtype : {DType::kF32, DType::kBF16})
    for (const int64_t cols : {1, 13, 4099}) {
      const Tensor a = random_input(37, cols, dtype, 7), b = random_input(1000, cols, dtype, 8);
      // A non-zero start: the op adds, it never overwrites.
      std::vector<float> start(static_cast<std::size_t>(cols));
      std::mt19937 rng(3);
      std::uniform_real_distribution<float> u(1.0f, 5.0f);
      for (auto& v : start) v = u(rng);
      Tensor sums = Tensor::copy_of(DType::kF32, {cols}, start.data());
      be->column_abs_sums(a, sums);
      be->column_abs_sums(b, sums);
      const std::vector<float> want = reference(b, reference(a, start));
      const std::vector<float> got = test::values(sums);
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_EQ(got[c], want[c]) << dtype_name(dtype) << " cols " << cols << " column " << c;
      // The same as summing both chunks at once, to f32 rounding.
      const std::vector<float> zeros(start.size(), 0.0f);
      const std::vector<float> sa = reference(a, zeros), sb = reference(b, zeros);
      for (int64_t c = 0; c < cols; ++c)
        EXPECT_NEAR(got[c], static_cast<double>(start[c]) + sa[c] + sb[c], 1e-6 * got[c]);
    }
}

TEST(ColumnAbsSums, SameResultForAnyThreadCount) {
  const Tensor x = random_input(1000, 4099, DType::kBF16, 11);
  const std::vector<float> zero(4099, 0.0f);
  const std::vector<float> one = run(*make_cpu_backend(1), x, zero);
  for (const int threads : {2, 5})
    EXPECT_EQ(run(*make_cpu_backend(threads), x, zero), one) << threads << " threads";
}

TEST(ColumnAbsSums, EmptyRowsLeaveSumsAlone) {
  auto be = make_cpu_backend(1);
  const std::vector<float> start = {1.5f, -2.0f, 3.0f};
  EXPECT_EQ(run(*be, Tensor::empty(DType::kF32, {0, 3}), start), start);
}

TEST(ColumnAbsSums, RejectsBadArguments) {
  auto be = make_cpu_backend(1);
  const Tensor x = random_input(4, 5, DType::kF32, 1);
  Tensor wrong_width = Tensor::empty(DType::kF32, {4});
  EXPECT_THROW(be->column_abs_sums(x, wrong_width), Error);
  Tensor bf16_sums = Tensor::empty(DType::kBF16, {5});
  EXPECT_THROW(be->column_abs_sums(x, bf16_sums), Error);
  Tensor sums = Tensor::empty(DType::kF32, {5});
  EXPECT_THROW(be->column_abs_sums(Tensor::empty(DType::kI32, {4, 5}), sums), Error);
  EXPECT_THROW(be->column_abs_sums(Tensor::empty(DType::kF32, {20}), sums), Error);
}

}  // namespace
}  // namespace refinery::backend
