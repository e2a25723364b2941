#pragma once
// Declarations shared by the two implementations of the flash attention backward:
// flash_attention_backward.cu (the plan, the workspace, the split reduction, the mma.sync lse/D,
// dK/dV and dQ kernels, the kernel choice) and flash_attention_backward_sm90a.cu (the Hopper
// wgmma lse/D, dK/dV and dQ kernels, same workspace layout, same partials).
// CUDA code only (include it from .cu files).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace refinery::backend::cuda::flash_bwd_detail {

using bf16 = __nv_bfloat16;

// Everything a dK/dV or dQ kernel needs. Sizes as in flash_attention_backward.hpp; t_pad = t rounded
// up to 64 (the lse/D rows are zero past t, up to t_pad).
struct BwdParams {
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const bf16* out;
  const bf16* dout;
  bf16* dq;  // null: not wanted
  bf16* dk;
  bf16* dv;
  float* lse;   // [H, t_pad], log2 units
  float* dsum;  // [H, t_pad], rowsum(dout ∘ out)
  const float* lse_in;  // the forward's [H, t] natural-log lse, or null: pass 1 recomputes it
  float* dk_part;  // [split, T, KV, dk] f32, null when split == 1
  float* dv_part;  // [split, T, KV, dv]
  int t, t_pad, heads, kv_heads, group, split, heads_per_split;
  float scale, scale_log2;
  bool overwrite;  // write the gradients instead of adding into them
};

// at[0], at[1] += x, y in bf16 (one rounding), or = x, y when `overwrite` (at is not read);
// `at` 4-byte aligned.
__device__ __forceinline__ void store_bf16_pair(bf16* at, float x, float y, bool overwrite) {
  auto* const pair = reinterpret_cast<__nv_bfloat162*>(at);
  const float2 old = overwrite ? make_float2(0.0f, 0.0f) : __bfloat1622float2(*pair);
  *pair = __floats2bfloat162_rn(old.x + x, old.y + y);
}

// ---- flash_attention_backward_sm90a.cu ----------------------------------------------------------
// Whether the wgmma kernels handle these widths: (64, 64) and (128, 128).
bool wgmma_backward_supports(int64_t dk, int64_t dv);
// Whether the current device can run them (compute 9.0).
bool wgmma_backward_available();
// The lse2/D pass (fills p.lse and p.dsum, [H, t_pad], zeros from t on).
void wgmma_backward_lse(const BwdParams& p, int dk, cudaStream_t stream);
// The dK/dV pass (p.dk or p.dv non-null): with p.split == 1 adds into p.dk / p.dv, otherwise
// writes the f32 partials p.dk_part / p.dv_part (flash_attention_backward.cu reduces them).
// Needs the lse/D pass to have run on `stream`.
void wgmma_backward_dkdv(const BwdParams& p, int dk, cudaStream_t stream);
// The dQ pass (p.dq non-null): adds scale · dS·K into p.dq.
void wgmma_backward_dq(const BwdParams& p, int dk, cudaStream_t stream);

}  // namespace refinery::backend::cuda::flash_bwd_detail
