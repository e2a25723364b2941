#pragma once
// Backward of the causal bf16 flash attention (FlashAttention-2 style: tensor cores, scores
// recomputed tile by tile, never stored; tiles above the diagonal skipped). Plain C++: no CUDA
// headers; the kernels live in flash_attention_backward.cu (flash_attention_backward_nocuda.cpp
// without CUDA). CudaBackend::attention_backward routes bf16 inputs here (attention_backward.cu).
#include <cstdint>

namespace refinery::backend::cuda {

// Whole sequences (s == t: query i sees keys 0..i), GQA (query head h uses kv head
// h / (heads / kv_heads)). All tensors contiguous bf16 on the current device, 16-byte aligned:
//   q [t, heads, dk], k [t, kv_heads, dk], v [t, kv_heads, dv],
//   out [t, heads, dv] (the forward's output), dout [t, heads, dv] (its gradient).
// The gradients ACCUMULATE (d_q += ∂L/∂q, ...; or are overwritten, see `overwrite` below),
// rounded to bf16 once per element; a null gradient pointer means "not wanted" (that tensor is
// neither read nor written):
//   d_q [t, heads, dk], d_k [t, kv_heads, dk], d_v [t, kv_heads, dv].
// workspace: device memory of flash_attention_backward_workspace_bytes(args) bytes (f32 scratch:
// per-row log-sum-exp and rowsum(dout ∘ out), and per group-split partial dK/dV sums); its
// content on entry does not matter.
// lse (optional): the forward's row log-sum-exp, f32 [heads, t], natural log (FlashAttentionArgs
// ::lse): the first pass then only computes rowsum(dout ∘ out) instead of recomputing Q·Kᵀ.
// overwrite: the gradients are written (their old content is not read) instead of accumulated.
struct FlashAttentionBackwardArgs {
  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const void* dout;
  void* d_q;
  void* d_k;
  void* d_v;
  int64_t t, heads, kv_heads, dk, dv;
  float scale;
  void* workspace;
  const float* lse = nullptr;
  bool overwrite = false;
};

// Whether the kernels handle these head widths: (dk, dv) in {(64,64), (128,128), (192,128)}.
// Always false in a build without CUDA.
bool flash_attention_backward_supports(int64_t dk, int64_t dv);

// Bytes of scratch the call needs for these sizes (a multiple of 16; depends on t, heads,
// kv_heads, dk, dv and which gradients are wanted, not on the device).
int64_t flash_attention_backward_workspace_bytes(const FlashAttentionBackwardArgs& args);

// Enqueues the kernels on `stream` (a cudaStream_t; nullptr is the default stream). Results are
// deterministic (no atomics: dK/dV per key block, dQ per query block, fixed-order sums). Throws
// an internal error for unsupported widths, inconsistent sizes, misaligned pointers, a missing
// workspace or a failed launch.
// Kernel choice (read per call): REFINERY_ATTN_BWD_KERNEL unset or "auto" runs the mma.sync kernels
// (flash_attention_backward.cu; the Hopper kernels are opt-in until validated on an H100), "mma"
// forces them, "wgmma" forces the Hopper warpgroup-MMA kernels (flash_attention_backward_sm90a.cu:
// compute 9.0, (dk, dv) = (64, 64) or (128, 128); a user error elsewhere); any other value is a
// user error. Both give the same results up to f32 summation order and bf16 rounding.
void flash_attention_backward_bf16(const FlashAttentionBackwardArgs& args, void* stream);

}  // namespace refinery::backend::cuda
