// Grouped GEMM in a build without the CUDA backend: no sizes are supported and a call is a bug of
// the caller (nothing should reach a device kernel without a device).
#include "engine/backend/cuda/grouped_gemm.hpp"

#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

bool grouped_gemm_supports(int64_t /*n*/, int64_t /*k*/) { return false; }

bool grouped_gemm_wgmma_available() { return false; }

bool grouped_gemm_fused_swiglu_available() { return false; }

void grouped_gemm_bf16(const GroupedGemmArgs& /*args*/, void* /*stream*/,
                       GroupedGemmKernel /*kernel*/) {
  throw_internal_error("grouped_gemm_bf16 called in a build without the CUDA backend "
                       "(configured with -DREFINERY_CUDA=OFF or without nvcc)");
}

}  // namespace refinery::backend::cuda
