// Tensor on a CUDA device: allocation, zero fill, host<->device copies. Skips without a device.
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>
#include <vector>

#include "engine/backend/cuda/device_info.hpp"
#include "engine/core/error.hpp"
#include "engine/core/tensor.hpp"

namespace refinery {
namespace {

#define REFINERY_REQUIRE_GPU()                                                    \
  do {                                                                            \
    if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();   \
  } while (0)

TEST(TensorGpu, RoundTripThroughTheDevice) {
  REFINERY_REQUIRE_GPU();
  std::vector<uint16_t> host(1000 * 3 + 1);
  std::iota(host.begin(), host.end(), uint16_t{1});
  Tensor src = Tensor::copy_of(DType::kBF16, {static_cast<int64_t>(host.size())}, host.data());
  Tensor dev = src.to(Device::kCUDA);
  EXPECT_EQ(dev.device(), Device::kCUDA);
  EXPECT_EQ(dev.describe(), "bf16[3001] (cuda)");
  Tensor dev2 = dev.clone();  // device to device
  EXPECT_EQ(dev2.device(), Device::kCUDA);
  EXPECT_FALSE(dev2.shares_storage_with(dev));
  Tensor back = dev2.slice(1, 3001).to(Device::kCPU);
  EXPECT_EQ(back.device(), Device::kCPU);
  EXPECT_EQ(std::memcmp(back.data(), host.data() + 1, back.nbytes()), 0);
  EXPECT_THROW(dev.to_f32(), Error);  // explicit: copy to the host first
}

TEST(TensorGpu, ZerosOnTheDevice) {
  REFINERY_REQUIRE_GPU();
  Tensor dev = Tensor::zeros(DType::kF32, {257, 3}, Device::kCUDA);
  Tensor host = Tensor::empty(DType::kF32, {257, 3});
  std::memset(host.mutable_data(), 0xFF, host.nbytes());  // poison
  host.copy_from(dev);
  for (int64_t i = 0; i < host.numel(); ++i) ASSERT_EQ(host.data<float>()[i], 0.0f) << i;
}

}  // namespace
}  // namespace refinery
