#pragma once
// Declarations and device helpers shared by the two implementations of the flash attention
// backward (the dK/dV epilogue, the lse/D row bookkeeping):
// flash_attention_backward.cu (the plan, the workspace, the split reduction, the mma.sync lse/D,
// dK/dV and dQ kernels, the kernel choice) and flash_attention_backward_sm90a.cu (the Hopper
// wgmma lse/D, dK/dV and dQ kernels, same workspace layout, same partials).
// CUDA code only (include it from .cu files).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "engine/backend/cuda/mma_ptx.cuh"

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

// This thread's part of key row `key` of dK and dV at the end of a dK/dV kernel (mma.sync or
// wgmma): the pairs (dims 8i + 2c, 8i + 2c + 1), i < DK / 8, of dK are dk(i, 0), dk(i, 1), those
// of dV (i < DV / 8) dv(i, 0), dv(i, 1) (accumulator entries, any scale applied). With one split
// they are added into (or written over) the bf16 gradients [T, KV, d]; otherwise written to the
// f32 partials [split, T, KV, d] of split `part`. A null p.dk / p.dv: that gradient is not wanted.
template <int DK, int DV, typename DkPair, typename DvPair>
__device__ __forceinline__ void store_key_row(const BwdParams& p, int key, int kvh, int part, int c,
                                              DkPair dk, DvPair dv) {
  if (p.split == 1) {
    if (p.dk != nullptr) {
      bf16* const row = p.dk + (int64_t{key} * p.kv_heads + kvh) * DK;
#pragma unroll
      for (int i = 0; i < DK / 8; ++i)
        store_bf16_pair(row + 8 * i + 2 * c, dk(i, 0), dk(i, 1), p.overwrite);
    }
    if (p.dv != nullptr) {
      bf16* const row = p.dv + (int64_t{key} * p.kv_heads + kvh) * DV;
#pragma unroll
      for (int i = 0; i < DV / 8; ++i)
        store_bf16_pair(row + 8 * i + 2 * c, dv(i, 0), dv(i, 1), p.overwrite);
    }
  } else {
    const int64_t at = (int64_t{part} * p.t + key) * p.kv_heads + kvh;
    if (p.dk != nullptr) {
      float* const row = p.dk_part + at * DK;
#pragma unroll
      for (int i = 0; i < DK / 8; ++i)
        *reinterpret_cast<float2*>(row + 8 * i + 2 * c) = make_float2(dk(i, 0), dk(i, 1));
    }
    if (p.dv != nullptr) {
      float* const row = p.dv_part + at * DV;
#pragma unroll
      for (int i = 0; i < DV / 8; ++i)
        *reinterpret_cast<float2*>(row + 8 * i + 2 * c) = make_float2(dv(i, 0), dv(i, 1));
    }
  }
}

// ---- the lse/D pass, shared by the mma.sync and wgmma kernels (the same values from both) -------

// D = rowsum(dout ∘ out) of one (query row, head) by one warp, `at` = (row · heads + head) · DV
// its element offset in out and dout: lane L sums the bf16 pairs L, L + 32, ... of the row, then
// a butterfly; every lane returns the total (0 when !valid: the rows from t on).
template <int DV>
__device__ __forceinline__ float warp_dsum(const BwdParams& p, int64_t at, bool valid, int lane) {
  float acc = 0.0f;
  if (valid) {
    const auto* o = reinterpret_cast<const __nv_bfloat162*>(p.out + at);
    const auto* d = reinterpret_cast<const __nv_bfloat162*>(p.dout + at);
#pragma unroll
    for (int i = lane; i < DV / 2; i += 32) {
      const float2 a = __bfloat1622float2(o[i]), b = __bfloat1622float2(d[i]);
      acc = fmaf(a.x, b.x, fmaf(a.y, b.y, acc));
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  return acc;
}

// One key tile of the online log-sum-exp of a query row (log2 units), the row held by the 4
// lanes of a quad (same g, accumulator layout): score(i, e) for i < PAIRS, e < 2 are this lane's
// scores of the row in the tile (−inf where masked). row_max becomes the quad's running max,
// row_sum this lane's Σ 2^(x − row_max) (rescaled to the new max; store_quad_lse2 adds the quad's).
// All 32 lanes must call it (shuffles).
template <int PAIRS, typename Score>
__device__ __forceinline__ void online_lse_step(float& row_max, float& row_sum, Score score) {
  float mx = row_max;
#pragma unroll
  for (int i = 0; i < PAIRS; ++i) mx = fmaxf(mx, fmaxf(score(i, 0), score(i, 1)));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
  mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
  const float base = mx == -INFINITY ? 0.0f : mx;  // nothing visible yet: no NaN
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < PAIRS; ++i)
    sum += ptx::exp2_approx(score(i, 0) - base) + ptx::exp2_approx(score(i, 1) - base);
  row_sum = row_sum * ptx::exp2_approx(row_max - base) + sum;
  row_max = mx;
}

// After a row's last online_lse_step: adds the quad's partial sums (all 32 lanes call it) and,
// where `write` (one lane of the quad), stores *lse2 = max + log2 Σ, or 0 for a row from t on
// (`valid` false).
__device__ __forceinline__ void store_quad_lse2(float* lse2, float row_max, float row_sum,
                                                bool write, bool valid) {
  float sum = row_sum;
  sum += __shfl_xor_sync(0xffffffffu, sum, 1);
  sum += __shfl_xor_sync(0xffffffffu, sum, 2);
  // Row < t: key 0 is visible, so the max is finite and sum >= 1.
  if (write) *lse2 = valid ? row_max + log2f(sum) : 0.0f;
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
