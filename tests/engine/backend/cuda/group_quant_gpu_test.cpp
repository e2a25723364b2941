// Backend::group_fake_quantize on CUDA vs the CPU op (the reference fake_quantize of
// src/quantize/group_quant.cpp): bitwise equal in f32 (same IEEE operations), and a group with a
// non-finite value gives NaN. bf16 output: the f32 result rounded once.
#include <array>
#include <random>

#include "cuda_test_util.hpp"

namespace refinery::cuda_test {
namespace {

TEST(GroupFakeQuantizeGpu, EqualsCpuBitwise) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0, DType::kF32);
  std::mt19937 rng(7);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.25f, 4.0f);
  for (const int64_t rows : {1, 7, 33})
    for (const int group : {32, 64, 128}) {
      const int64_t cols = group * 3;
      std::vector<float> w(rows * cols), s(cols);
      for (auto& v : w) v = n01(rng);
      w[0] = 9.0f;  // an outlier
      for (auto& v : s) v = u(rng);
      const Tensor wt = Tensor::copy_of(DType::kF32, {rows, cols}, w.data());
      const Tensor st = Tensor::copy_of(DType::kF32, {cols}, s.data());
      for (int bits : {3, 4, 8})
        for (bool zp : {true, false})
          for (float clip : {1.0f, 0.7f}) {
            const bool scaled = clip == 1.0f;  // s with no clip, a clip without s
            const backend::FakeQuantSpec q{bits, group, zp, clip};
            Tensor want = Tensor::empty(DType::kF32, {rows, cols});
            cpu->group_fake_quantize(wt, scaled ? st : Tensor(), q, want);
            Tensor got = poisoned_gpu({rows, cols});
            be->group_fake_quantize(gpu(wt), scaled ? gpu(st) : Tensor(), q, got);
            const Tensor host = got.to(Device::kCPU);
            for (int64_t i = 0; i < rows * cols; ++i)
              ASSERT_EQ(host.data<float>()[i], want.data<float>()[i])
                  << "rows " << rows << " group " << group << " bits " << bits << " zp " << zp
                  << " clip " << clip << " at " << i;
          }
    }
}

TEST(GroupFakeQuantizeGpu, NonFiniteGroupGivesNan) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0, DType::kF32);
  std::vector<float> w(2 * 64, 0.5f);
  w[3] = INFINITY;  // row 0, group 0
  Tensor got = poisoned_gpu({2, 64});
  be->group_fake_quantize(gpu(Tensor::copy_of(DType::kF32, {2, 64}, w.data())), Tensor(),
                          {4, 32, true, 1.0f}, got);
  const Tensor host = got.to(Device::kCPU);
  for (int i = 0; i < 32; ++i) EXPECT_TRUE(std::isnan(host.data<float>()[i])) << i;
  for (int i = 32; i < 128; ++i) EXPECT_FALSE(std::isnan(host.data<float>()[i])) << i;
}

// The clip search's errors: CUDA vs the CPU op (Eigen), f32 accumulation in another order.
TEST(GroupFakeQuantizeGpu, OutputErrorsMatchCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0, DType::kF32);
  std::mt19937 rng(9);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (const auto& [n, out, group] : std::vector<std::array<int64_t, 3>>{
           {37, 45, 32}, {64, 33, 64}, {100, 70, 128}}) {
    const int64_t in = group * 3;
    std::vector<float> x(n * in), w(out * in);
    for (auto& v : x) v = n01(rng);
    for (auto& v : w) v = n01(rng);
    const Tensor xt = Tensor::copy_of(DType::kF32, {n, in}, x.data());
    const Tensor wt = Tensor::copy_of(DType::kF32, {out, in}, w.data());
    Tensor qt = Tensor::empty(DType::kF32, {out, in});
    cpu->group_fake_quantize(wt, Tensor(), {4, static_cast<int>(group), true, 0.8f}, qt);
    Tensor want = Tensor::empty(DType::kF32, {out, in / group});
    cpu->group_output_errors(xt, qt, wt, static_cast<int>(group), want);
    Tensor got = poisoned_gpu({out, in / group});
    be->group_output_errors(gpu(xt), gpu(qt), gpu(wt), static_cast<int>(group), got);
    const Tensor host = got.to(Device::kCPU);
    for (int64_t i = 0; i < out * (in / group); ++i)
      ASSERT_NEAR(host.data<float>()[i], want.data<float>()[i], 1e-4 * want.data<float>()[i] + 1e-7)
          << "n " << n << " out " << out << " group " << group << " at " << i;
  }
}

}  // namespace
}  // namespace refinery::cuda_test
