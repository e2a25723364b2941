// GPU tests (label `gpu`): they skip with the reason where this build or machine has no CUDA
// device.
#include <gtest/gtest.h>

#include "engine/backend/cuda/device_info.hpp"

namespace refinery::cuda {
namespace {

TEST(DeviceInfo, ListsUsableDevices) {
  const auto devices = list_devices();
  if (devices.empty()) GTEST_SKIP() << no_device_reason();
  EXPECT_TRUE(built_with_cuda());
  EXPECT_TRUE(no_device_reason().empty());
  for (const auto& device : devices) {
    EXPECT_FALSE(device.name.empty());
    EXPECT_GT(device.total_memory_bytes, std::size_t{1} << 30) << device.name;
    EXPECT_LE(device.free_memory_bytes, device.total_memory_bytes);
    EXPECT_GE(device.compute_capability_major, 7) << "Refinery targets sm_70 and newer";
  }
}

TEST(DeviceInfo, ReasonIsGivenWhenThereIsNoDevice) {
  if (!list_devices().empty()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_FALSE(no_device_reason().empty());
}

}  // namespace
}  // namespace refinery::cuda
