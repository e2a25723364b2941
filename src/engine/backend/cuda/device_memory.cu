// Device memory primitives for Tensor storage (see engine/core/device_memory.hpp).
//
// Allocation is the caching allocator of the engine: CUDA's stream-ordered pool (cudaMallocAsync /
// cudaFreeAsync) with the release threshold raised to "never", so memory a forward frees (scratch
// buffers, activations) goes back to the pool and the next forward gets it without a cudaMalloc
// or a device synchronization. Allocations and frees are enqueued on the calling thread's default
// stream (the build uses per-thread default streams), which is also the stream of the backend that
// thread uses: a free is ordered after the kernels that thread enqueued before it, and work
// enqueued after an allocation sees it allocated. A tensor handed to another thread must be
// complete first (its producer synchronizes) and is then freed in the consumer's stream order. When the pool cannot grow,
// its unused memory is returned to the device (trim) and the allocation is retried once.
// Host<->device copies are synchronous on purpose: they are not the hot path.
#include <cstdint>
#include <mutex>

#include "engine/backend/cuda/cuda_check.hpp"
#include "engine/core/device_memory.hpp"
#include "engine/core/log.hpp"

namespace refinery {

namespace {

// The current device's default pool, its release threshold raised once per device.
cudaMemPool_t caching_pool() {
  static std::mutex mutex;
  static bool configured[64] = {};
  int device = 0;
  REFINERY_CUDA_CHECK(cudaGetDevice(&device));
  cudaMemPool_t pool = nullptr;
  REFINERY_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
  std::lock_guard<std::mutex> lock(mutex);
  if (device < 64 && !configured[device]) {
    uint64_t threshold = UINT64_MAX;
    REFINERY_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));
    configured[device] = true;
  }
  return pool;
}

}  // namespace

void* device_malloc(std::size_t bytes) {
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  const cudaMemPool_t pool = caching_pool();
  cudaError_t status = cudaMallocFromPoolAsync(&ptr, bytes, pool, cudaStreamPerThread);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    // Memory freed to the pool but not reusable for this size goes back to the device first.
    REFINERY_CUDA_CHECK(cudaDeviceSynchronize());
    REFINERY_CUDA_CHECK(cudaMemPoolTrimTo(pool, 0));
    status = cudaMallocFromPoolAsync(&ptr, bytes, pool, cudaStreamPerThread);
  }
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
  cudaError_t status = cudaFreeAsync(ptr, cudaStreamPerThread);
  if (status != cudaSuccess) {
    cudaGetLastError();
    log::warn("cudaFreeAsync failed: ", cudaGetErrorString(status));
  }
}

std::size_t device_peak_bytes() {
  uint64_t high = 0;
  REFINERY_CUDA_CHECK(cudaMemPoolGetAttribute(caching_pool(), cudaMemPoolAttrUsedMemHigh, &high));
  return static_cast<std::size_t>(high);
}

void device_reset_peak_bytes() {
  uint64_t zero = 0;  // the only value the attribute accepts: resets to the current use
  REFINERY_CUDA_CHECK(cudaMemPoolSetAttribute(caching_pool(), cudaMemPoolAttrUsedMemHigh, &zero));
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
  REFINERY_CUDA_CHECK(cudaMemset(device_ptr, 0, bytes));  // legacy stream, after the allocation
}

}  // namespace refinery
