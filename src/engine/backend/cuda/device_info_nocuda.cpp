// The device module of a build without the CUDA backend (-DREFINERY_CUDA=OFF or no nvcc).
#include "engine/backend/cuda/device_info.hpp"

namespace refinery::cuda {

bool built_with_cuda() { return false; }
std::vector<DeviceInfo> list_devices() { return {}; }
std::string no_device_reason() { return "this build has no CUDA backend (configured without nvcc)"; }
int current_device_compute_major() { return 0; }
int current_device_sm_count() { return 0; }

}  // namespace refinery::cuda
