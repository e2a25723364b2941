// Backend::column_abs_sums on CUDA vs the CPU op (a sequential double sum per column). Both sum
// in double and round once to f32, in different row orders: the outputs agree to a few f32 ulp
// (bound below: 4 ulp of the value). The output vector sits inside a NaN-poisoned buffer whose
// guard elements must stay NaN (no write out of range); in the fresh case the vector itself is
// poisoned and then zeroed with fill_zero (AWQ's use), in the accumulate case it starts from
// non-zero values and takes two calls.
#include <cmath>
#include <random>
#include <vector>

#include "cuda_test_util.hpp"

namespace refinery::cuda_test {
namespace {

constexpr int64_t kGuard = 37;

Tensor random_input(int64_t n, int64_t cols, DType dtype, uint64_t seed) {
  Tensor x = random_f32({n, cols}, seed, 1.0f);
  float* p = x.mutable_data<float>();
  for (int64_t i = 0; i < x.numel(); i += 97) p[i] *= 300.0f;  // outlier channels
  return dtype == DType::kF32 ? x : convert(x, dtype);
}

// A device buffer [guard, cols, guard] of NaN, with `start` (if given) in the middle.
Tensor guarded_buffer(int64_t cols, const std::vector<float>* start) {
  std::vector<float> h(static_cast<std::size_t>(cols + 2 * kGuard), NAN);
  if (start != nullptr)
    for (int64_t c = 0; c < cols; ++c) h[kGuard + c] = (*start)[c];
  return gpu(Tensor::copy_of(DType::kF32, {cols + 2 * kGuard}, h.data()));
}

::testing::AssertionResult check(const std::string& what, const Tensor& buffer, int64_t cols,
                                 const Tensor& want) {
  const std::vector<float> all = values(buffer);
  for (int64_t i = 0; i < kGuard; ++i)
    if (!std::isnan(all[i]) || !std::isnan(all[kGuard + cols + i]))
      return ::testing::AssertionFailure() << what << ": a guard element was written";
  const Tensor got = Tensor::copy_of(DType::kF32, {cols}, all.data() + kGuard);
  std::vector<float> bound(static_cast<std::size_t>(cols));
  const std::vector<float> w = values(want);
  for (int64_t c = 0; c < cols; ++c) bound[c] = 4.0f * std::ldexp(std::fabs(w[c]), -23);
  return close(what, got, want, 0.0, bound);
}

const std::vector<int64_t> kRows = {1, 37, 70, 1000, 4133};
const std::vector<int64_t> kCols = {1, 13, 33, 4099};

TEST(ColumnAbsSumsGpu, FreshSumsMatchCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(2);
  auto be = backend::make_cuda_backend(0, DType::kBF16);
  uint64_t seed = 500;
  for (const DType dtype : {DType::kF32, DType::kBF16})
    for (const int64_t n : kRows)
      for (const int64_t cols : kCols) {
        const Tensor x = random_input(n, cols, dtype, ++seed);
        Tensor want = Tensor::empty(DType::kF32, {cols});
        cpu->fill_zero(want);
        cpu->column_abs_sums(x, want);
        Tensor buffer = guarded_buffer(cols, nullptr);  // all NaN
        Tensor sums = buffer.slice(kGuard, kGuard + cols);
        be->fill_zero(sums);
        be->column_abs_sums(gpu(x), sums);
        EXPECT_TRUE(check(std::string(dtype_name(dtype)) + " n " + std::to_string(n) + " cols " +
                              std::to_string(cols),
                          buffer, cols, want));
      }
}

TEST(ColumnAbsSumsGpu, AccumulatesOverCallsLikeCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(2);
  auto be = backend::make_cuda_backend(0, DType::kF32);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(1.0f, 5.0f);
  for (const DType dtype : {DType::kF32, DType::kBF16})
    for (const int64_t cols : kCols) {
      const Tensor a = random_input(70, cols, dtype, 1), b = random_input(1000, cols, dtype, 2);
      std::vector<float> start(static_cast<std::size_t>(cols));
      for (auto& v : start) v = u(rng);
      Tensor want = Tensor::copy_of(DType::kF32, {cols}, start.data());
      cpu->column_abs_sums(a, want);
      cpu->column_abs_sums(b, want);
      Tensor buffer = guarded_buffer(cols, &start);
      Tensor sums = buffer.slice(kGuard, kGuard + cols);
      be->column_abs_sums(gpu(a), sums);
      be->column_abs_sums(gpu(b), sums);
      EXPECT_TRUE(check(std::string(dtype_name(dtype)) + " accumulate cols " +
                            std::to_string(cols),
                        buffer, cols, want));
    }
}

TEST(ColumnAbsSumsGpu, SameResultEveryRun) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0, DType::kBF16);
  const Tensor x = gpu(random_input(4133, 4099, DType::kBF16, 9));
  std::vector<float> first;
  for (int run = 0; run < 3; ++run) {
    Tensor sums = be->empty(DType::kF32, {4099});
    be->fill_zero(sums);
    be->column_abs_sums(x, sums);
    const std::vector<float> v = values(sums);
    if (run == 0)
      first = v;
    else
      EXPECT_EQ(v, first) << "run " << run;
  }
}

TEST(ColumnAbsSumsGpu, RejectsBadArguments) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0, DType::kBF16);
  const Tensor x = gpu(random_input(4, 5, DType::kF32, 1));
  Tensor wrong = be->empty(DType::kF32, {4});
  EXPECT_THROW(be->column_abs_sums(x, wrong), Error);
  Tensor host_sums = Tensor::empty(DType::kF32, {5});
  EXPECT_THROW(be->column_abs_sums(x, host_sums), Error);
}

}  // namespace
}  // namespace refinery::cuda_test
