// AWQ kernels in a build without the CUDA backend: nothing is supported and a call is a bug of the
// caller (nothing should reach a device kernel without a device).
#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw_internal_error(what,
                       " called in a build without the CUDA backend (configured with "
                       "-DREFINERY_CUDA=OFF or without nvcc)");
}
}  // namespace

bool awq_gemv_supports(const AwqDeviceMatrix& /*w*/, int64_t /*rows*/) { return false; }

int64_t awq_gemv_workspace_floats(const AwqDeviceMatrix& /*w*/, int64_t /*rows*/) { return 0; }

void awq_gemv_bf16(const AwqDeviceMatrix& /*w*/, const void* /*x*/, int64_t /*rows*/, void* /*y*/,
                   bool /*y_f32*/, float* /*workspace*/, int64_t /*workspace_floats*/,
                   void* /*stream*/) {
  no_cuda("awq_gemv_bf16");
}

void awq_dequantize_bf16(const AwqDeviceMatrix& /*w*/, int64_t /*word_begin*/,
                         int64_t /*word_count*/, void* /*out*/, void* /*stream*/) {
  no_cuda("awq_dequantize_bf16");
}

AwqLayout awq_device_layout(int /*bits*/, int64_t /*group_size*/, int64_t /*out*/, int64_t /*in*/) {
  return AwqLayout::kAutoAwq;
}

void awq_repack_tiled(const AwqDeviceMatrix& /*src*/, int32_t* /*qweight*/, void* /*zeros*/,
                      void* /*scales*/, void* /*stream*/) {
  no_cuda("awq_repack_tiled");
}

AwqDeviceMatrix awq_device_matrix(CudaBackend& /*be*/, const AwqWeight& /*w*/,
                                  const std::string& /*name*/, std::vector<Tensor>& /*keep*/) {
  no_cuda("awq_device_matrix");
}

void awq_linear(CudaBackend& /*be*/, const Tensor& /*x*/, const AwqWeight& /*w*/,
                const std::string& /*name*/, Tensor& /*y*/) {
  no_cuda("awq_linear");
}

void awq_dequantize_weight(CudaBackend& /*be*/, const AwqWeight& /*w*/, const std::string& /*name*/,
                           void* /*out*/) {
  no_cuda("awq_dequantize_weight");
}

}  // namespace refinery::backend::cuda
