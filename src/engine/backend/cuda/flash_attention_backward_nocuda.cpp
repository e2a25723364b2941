// Flash attention backward in a build without the CUDA backend: no widths are supported and a
// call is a bug of the caller (nothing should reach a device kernel without a device).
#include "engine/backend/cuda/flash_attention_backward.hpp"

#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

bool flash_attention_backward_supports(int64_t /*dk*/, int64_t /*dv*/) { return false; }

int64_t flash_attention_backward_workspace_bytes(const FlashAttentionBackwardArgs& /*args*/) {
  return 0;
}

void flash_attention_backward_bf16(const FlashAttentionBackwardArgs& /*args*/, void* /*stream*/) {
  throw_internal_error("flash_attention_backward_bf16 called in a build without the CUDA backend "
                       "(configured with -DREFINERY_CUDA=OFF or without nvcc)");
}

}  // namespace refinery::backend::cuda
