#pragma once
// cuBLAS member of the CUDA-check macro family (cuda_check.hpp): a failing cuBLAS call throws
// refinery::Error (internal) naming the call, file and line.

#include <cublas_v2.h>

#include "engine/core/error.hpp"

#define REFINERY_CUBLAS_CHECK(call)                                                                \
  do {                                                                                             \
    cublasStatus_t refinery_status_ = (call);                                                      \
    if (refinery_status_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::refinery::throw_internal_error("cuBLAS error in ", #call, " at ", __FILE__, ":", __LINE__, \
                                       ": ", cublasGetStatusString(refinery_status_));             \
  } while (0)
