#pragma once
// Internal to the AWQ GEMV's .cu files (awq_linear.cu: the base kernel; awq_gemv.cu: the variants
// and the variant dispatch). Not for g++-compiled code: see awq_linear.hpp for the public API.
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/backend/cuda/cuda_check.hpp"

namespace refinery::backend::cuda {

// Launches the base GEMV kernel (variant 0, awq_linear.cu's header comment) after the argument
// checks of awq_gemv_bf16 have passed.
void awq_gemv_base_launch(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                          bool y_f32, void* stream);
// Launches variant `variant` (awq_gemv.cu) and returns true, or returns false without launching
// when the variant falls back to base for this matrix and row count (or is base itself).
bool awq_gemv_v2_launch(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                        bool y_f32, int variant, void* stream);

// A launch configuration of `blocks` blocks of 32 x warps threads grouped in thread-block clusters
// of `cluster` blocks along x (sm_90; both GEMV kernel families reduce K across the blocks of a
// cluster through distributed shared memory). config.attrs points into the object: not copyable.
struct ClusterLaunch {
  cudaLaunchConfig_t config = {};
  cudaLaunchAttribute attribute[1] = {};

  ClusterLaunch(int64_t blocks, int cluster, int warps, std::size_t smem_bytes, void* stream) {
    config.gridDim = dim3(static_cast<unsigned>(blocks));
    config.blockDim = dim3(static_cast<unsigned>(32 * warps));
    config.dynamicSmemBytes = smem_bytes;
    config.stream = static_cast<cudaStream_t>(stream);
    attribute[0].id = cudaLaunchAttributeClusterDimension;
    attribute[0].val.clusterDim.x = static_cast<unsigned>(cluster);
    attribute[0].val.clusterDim.y = 1;
    attribute[0].val.clusterDim.z = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// Clusters of `cluster` blocks of `warps` warps of `kernel` resident on the current device at once;
// 0 for a configuration the device cannot run.
template <typename Params>
int max_active_clusters(void (*kernel)(Params), int cluster, int warps, std::size_t smem_bytes) {
  ClusterLaunch launch(cluster, cluster, warps, smem_bytes, nullptr);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &launch.config) != cudaSuccess) {
    (void)cudaGetLastError();  // a configuration the device cannot run: none resident
    return 0;
  }
  return clusters;
}

// Launches kernel(params) on tiles x cluster blocks in clusters of `cluster` blocks.
template <typename Params>
void launch_clustered(void (*kernel)(Params), const Params& params, int64_t tiles, int cluster,
                      int warps, int64_t smem_bytes, void* stream) {
  ClusterLaunch launch(tiles * cluster, cluster, warps, static_cast<std::size_t>(smem_bytes), stream);
  REFINERY_CUDA_CHECK(cudaLaunchKernelEx(&launch.config, kernel, params));
}

}  // namespace refinery::backend::cuda
