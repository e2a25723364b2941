// Backend::sum_squared_difference on CUDA vs the CPU op (both sum in double, in different orders:
// relative 1e-12), for f32 and bf16, awkward sizes; a = b gives exactly 0; mismatches refused.
#include "cuda_test_util.hpp"

namespace refinery::cuda_test {
namespace {

TEST(SumSquaredDifferenceGpu, MatchesCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  auto cpu = backend::make_cpu_backend(1);
  for (const DType dtype : {DType::kF32, DType::kBF16})
    for (const int64_t n : {int64_t{1}, int64_t{37}, int64_t{65537}, int64_t{3000017}}) {
      Tensor a = random_f32({n}, 5 + n, 2.0f), b = random_f32({n}, 6 + n, 2.0f);
      if (dtype == DType::kBF16) {
        a = convert(a, dtype);
        b = convert(b, dtype);
      }
      const double want = cpu->sum_squared_difference(a, b);
      const double got = be->sum_squared_difference(gpu(a), gpu(b));
      EXPECT_NEAR(got, want, 1e-12 * want) << "n " << n;
      EXPECT_EQ(be->sum_squared_difference(gpu(a), gpu(a)), 0.0);
      EXPECT_NEAR(be->sum_squares(gpu(a)), cpu->sum_squares(a), 1e-12 * cpu->sum_squares(a));
    }
  const Tensor a = gpu(random_f32({10}, 1)), b = gpu(random_f32({11}, 2));
  EXPECT_THROW(be->sum_squared_difference(a, b), Error);
  EXPECT_THROW(be->sum_squared_difference(a, gpu(convert(random_f32({10}, 3), DType::kBF16))),
               Error);
}

}  // namespace
}  // namespace refinery::cuda_test
