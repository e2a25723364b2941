#pragma once
// Internal to the AWQ GEMV's .cu files (awq_linear.cu: the base kernel; awq_gemv.cu: the tiled
// kernel, the variants and the variant dispatch). Not for g++-compiled code: see awq_linear.hpp for the public API.
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

// Whether the tiled GEMV (awq_gemv.cu) runs on this device for a tiled matrix (false for an
// AutoAWQ-layout one).
bool awq_gemv_tiled_usable(const AwqDeviceMatrix& w);
// Launches the tiled GEMV for a tiled matrix, `variant` picking its configuration (an AutoAWQ
// variant: the default tiled one), after the argument checks of awq_gemv_bf16 have passed.
void awq_gemv_tiled_launch(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                           bool y_f32, int variant, void* stream);

// Launches kernel(params) on tiles x cluster blocks of 32 x warps threads, grouped in thread-block
// clusters of `cluster` blocks along x (sm_90; both GEMV kernel families reduce K across the
// blocks of a cluster through distributed shared memory).
template <typename Params>
void launch_clustered(void (*kernel)(Params), const Params& params, int64_t tiles, int cluster,
                      int warps, int64_t smem_bytes, void* stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(tiles * cluster));
  config.blockDim = dim3(static_cast<unsigned>(32 * warps));
  config.dynamicSmemBytes = static_cast<std::size_t>(smem_bytes);
  config.stream = static_cast<cudaStream_t>(stream);
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeClusterDimension;
  attribute[0].val.clusterDim.x = static_cast<unsigned>(cluster);
  attribute[0].val.clusterDim.y = 1;
  attribute[0].val.clusterDim.z = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  REFINERY_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, params));
}

}  // namespace refinery::backend::cuda
