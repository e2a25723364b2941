// AWQ GEMV variants in a build without the CUDA backend: only "base" is listed (nothing runs; a
// launch is a bug of the caller, like awq_gemv_bf16 in awq_linear_nocuda.cpp).
#include <string>

#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

int awq_gemv_variant_count() { return 1; }

std::string awq_gemv_variant_name(int /*variant*/) { return "base"; }

std::string awq_gemv_variant_description(int /*variant*/) {
  return "none (build without the CUDA backend)";
}

bool awq_gemv_variant_is_tiled(int /*variant*/) { return false; }

int awq_gemv_active_variant() { return kAwqGemvDefaultVariant; }

std::string awq_gemv_variant_runs(const AwqDeviceMatrix& /*w*/, int64_t /*rows*/,
                                  int /*variant*/) {
  return "none (build without the CUDA backend)";
}

void awq_gemv_bf16_variant(const AwqDeviceMatrix& /*w*/, const void* /*x*/, int64_t /*rows*/,
                           void* /*y*/, bool /*y_f32*/, int /*variant*/, void* /*stream*/) {
  throw_internal_error(
      "awq_gemv_bf16_variant called in a build without the CUDA backend (configured with "
      "-DREFINERY_CUDA=OFF or without nvcc)");
}

}  // namespace refinery::backend::cuda
