#pragma once
// What CUDA devices this process can use. Compiled from device_info.cu when the CUDA backend is
// built and from device_info_nocuda.cpp otherwise, so callers never need #ifdefs.

#include <cstddef>
#include <string>
#include <vector>

namespace refinery::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  std::size_t total_memory_bytes = 0;
  std::size_t free_memory_bytes = 0;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
};

// True when this build has the CUDA backend.
bool built_with_cuda();
// The devices present (empty without a driver or a GPU, or in a build without CUDA).
std::vector<DeviceInfo> list_devices();
// Why list_devices() is empty, in words ("built without CUDA", "no CUDA device: ..."); empty if not.
std::string no_device_reason();
// The current device's compute capability major version (9: Hopper, which has thread-block
// clusters and programmatic dependent launch) and its number of SMs; 0 in a build without CUDA.
int current_device_compute_major();
int current_device_sm_count();

}  // namespace refinery::cuda
