#pragma once
// Raw device memory for Tensor storage. Implemented by backend/cuda/device_memory.cu in a CUDA
// build and by backend/cuda/device_memory_nocuda.cpp otherwise, where every function throws a user
// error saying that this build has no CUDA backend (so callers never need #ifdefs).
//
// These are the low-level primitives; code should hold device memory through a Tensor (RAII),
// never through a bare pointer from device_malloc.

#include <cstddef>

namespace refinery {

// cudaMalloc on the current device; throws refinery::Error (internal) when it fails, e.g. out of
// memory. device_malloc(0) returns nullptr.
void* device_malloc(std::size_t bytes);
// cudaFree; nullptr is a no-op. Never throws (it runs in destructors): a failure is logged.
void device_free(void* ptr) noexcept;

// Synchronous copies (cudaMemcpy) between host and device memory, and device-side zero fill.
void copy_host_to_device(void* device_dst, const void* host_src, std::size_t bytes);
void copy_device_to_host(void* host_dst, const void* device_src, std::size_t bytes);
void copy_device_to_device(void* device_dst, const void* device_src, std::size_t bytes);
void device_memset_zero(void* device_ptr, std::size_t bytes);
// The most memory the caching pool of the current device has handed out at once since the last
// reset (cudaMemPoolAttrUsedMemHigh): the peak a benchmark reports. Reset sets it to the current use.
std::size_t device_peak_bytes();
void device_reset_peak_bytes();

}  // namespace refinery
