#pragma once
// The one CUDA-check macro family (DESIGN §8). Every CUDA runtime, cuBLAS(Lt) and NCCL call goes
// through one of these; a failure throws refinery::Error (internal) naming the call, file and line.
// REFINERY_CUDA_CHECK_LAUNCH(op) goes after every kernel launch with the op's name.

#include <cuda_runtime.h>

#include "engine/core/error.hpp"

#define REFINERY_CUDA_CHECK(call)                                                            \
  do {                                                                                       \
    cudaError_t refinery_status_ = (call);                                                   \
    if (refinery_status_ != cudaSuccess)                                                     \
      ::refinery::throw_internal_error("CUDA error in ", #call, " at ", __FILE__, ":",       \
                                       __LINE__, ": ", cudaGetErrorString(refinery_status_)); \
  } while (0)

#define REFINERY_CUDA_CHECK_LAUNCH(op_name)                                                     \
  do {                                                                                          \
    cudaError_t refinery_status_ = cudaGetLastError();                                          \
    if (refinery_status_ != cudaSuccess)                                                        \
      ::refinery::throw_internal_error("CUDA kernel launch failed in op ", op_name, " at ",     \
                                       __FILE__, ":", __LINE__, ": ",                           \
                                       cudaGetErrorString(refinery_status_));                   \
  } while (0)
