// Flash attention in a build without the CUDA backend: no widths are supported and a call is a bug
// of the caller (nothing should reach a device kernel without a device).
#include "engine/backend/cuda/flash_attention.hpp"

#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

bool flash_attention_supports(int64_t /*dk*/, int64_t /*dv*/) { return false; }

void flash_attention_bf16(const FlashAttentionArgs& /*args*/, void* /*stream*/) {
  throw_internal_error("flash_attention_bf16 called in a build without the CUDA backend "
                       "(configured with -DREFINERY_CUDA=OFF or without nvcc)");
}

bool flash_attention_wgmma_available() { return false; }

bool flash_attention_wgmma_supports(const FlashAttentionArgs& /*args*/) { return false; }

void flash_attention_wgmma_bf16(const FlashAttentionArgs& /*args*/, void* /*stream*/) {
  throw_internal_error("flash_attention_wgmma_bf16 called in a build without the CUDA backend "
                       "(configured with -DREFINERY_CUDA=OFF or without nvcc)");
}

}  // namespace refinery::backend::cuda
