// Device memory primitives for Tensor storage (see engine/core/device_memory.hpp). Synchronous on
// purpose: these back allocation and explicit host<->device copies, not the hot path, which runs
// on streams inside the backend.
#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/core/device_memory.hpp"
#include "engine/core/log.hpp"

namespace refinery {

void* device_malloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  cudaError_t status = cudaMalloc(&ptr, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls do not report it again
    std::size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) cudaGetLastError();
    throw_internal_error("cudaMalloc of ", bytes, " bytes failed: ", cudaGetErrorString(status),
                         " (device has ", free_bytes, " of ", total_bytes,
                         " bytes free); use a smaller batch or sequence length, or a larger GPU");
  }
  return ptr;
}

void device_free(void* ptr) noexcept {
  if (ptr == nullptr) return;
  cudaError_t status = cudaFree(ptr);
  if (status != cudaSuccess) {
    cudaGetLastError();
    log::warn("cudaFree failed: ", cudaGetErrorString(status));
  }
}

void copy_host_to_device(void* device_dst, const void* host_src, std::size_t bytes) {
  if (bytes == 0) return;
  REFINERY_CUDA_CHECK(cudaMemcpy(device_dst, host_src, bytes, cudaMemcpyHostToDevice));
}

void copy_device_to_host(void* host_dst, const void* device_src, std::size_t bytes) {
  if (bytes == 0) return;
  REFINERY_CUDA_CHECK(cudaMemcpy(host_dst, device_src, bytes, cudaMemcpyDeviceToHost));
}

void copy_device_to_device(void* device_dst, const void* device_src, std::size_t bytes) {
  if (bytes == 0) return;
  REFINERY_CUDA_CHECK(cudaMemcpy(device_dst, device_src, bytes, cudaMemcpyDeviceToDevice));
}

void device_memset_zero(void* device_ptr, std::size_t bytes) {
  if (bytes == 0) return;
  REFINERY_CUDA_CHECK(cudaMemset(device_ptr, 0, bytes));
}

}  // namespace refinery
