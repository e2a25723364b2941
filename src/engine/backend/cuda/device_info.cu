// Device discovery through the CUDA runtime. "No driver" and "no device" are normal conditions
// here (CI has no GPU), reported as an empty list with a reason rather than an error.
#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/backend/cuda/device_info.hpp"

namespace refinery::cuda {

bool built_with_cuda() { return true; }

std::vector<DeviceInfo> list_devices() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device/driver" status
    return {};
  }
  std::vector<DeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    REFINERY_CUDA_CHECK(cudaGetDeviceProperties(&prop, i));
    DeviceInfo info;
    info.index = i;
    info.name = prop.name;
    info.total_memory_bytes = prop.totalGlobalMem;
    info.compute_capability_major = prop.major;
    info.compute_capability_minor = prop.minor;
    REFINERY_CUDA_CHECK(cudaSetDevice(i));
    std::size_t free_bytes = 0, total_bytes = 0;
    REFINERY_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    info.free_memory_bytes = free_bytes;
    devices.push_back(info);
  }
  return devices;
}

namespace {
int current_device_attribute(cudaDeviceAttr attribute) {
  int device = 0, value = 0;
  REFINERY_CUDA_CHECK(cudaGetDevice(&device));
  REFINERY_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));  // cached by the driver
  return value;
}
}  // namespace

int current_device_compute_major() {
  return current_device_attribute(cudaDevAttrComputeCapabilityMajor);
}
int current_device_sm_count() { return current_device_attribute(cudaDevAttrMultiProcessorCount); }

std::string no_device_reason() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return str("no CUDA device: ", cudaGetErrorString(status));
  }
  return count == 0 ? "no CUDA device present" : "";
}

}  // namespace refinery::cuda
