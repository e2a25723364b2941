#pragma once
// Tiled causal flash attention on bf16 tensors (FlashAttention-2 style: tensor cores, online
// softmax, no score matrix in memory). Plain C++: no CUDA headers, so g++-compiled code and tests
// can call it; the kernel lives in flash_attention.cu (flash_attention_nocuda.cpp without CUDA).
#include <cstdint>

namespace refinery::backend::cuda {

// Causal attention, all tensors contiguous bf16 on the current CUDA device (raw device pointers,
// 16-byte aligned):
//   q [t, heads, dk], k [s, kv_heads, dk], v [s, kv_heads, dv], out [t, heads, dv].
// s >= t and query i sees keys [0, s - t + i] (the last t keys are the new tokens); query head h
// uses kv head h / (heads / kv_heads). P = softmax(q·kᵀ·scale) with f32 accumulation.
// lse (optional, f32 [heads, t]): also written, the natural-log log-sum-exp of each row's scaled
// scores (what the backward needs to rebuild P).
struct FlashAttentionArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  int64_t t, s, heads, kv_heads, dk, dv;
  float scale;
  float* lse = nullptr;
};

// Whether the kernel handles these head widths: (dk, dv) in {(16,16), (32,32), (64,64), (96,96),
// (128,128), (192,128) (MLA), (256,256)}. Others go to the backend's simple kernel. Always false in
// a build without CUDA.
bool flash_attention_supports(int64_t dk, int64_t dv);

// Enqueues the kernel on `stream` (a cudaStream_t; nullptr is the default stream). Throws an
// internal error for unsupported widths, inconsistent sizes, misaligned pointers or a failed launch.
// Kernel choice (read per call): REFINERY_ATTN_KERNEL unset or "auto" runs the mma.sync kernel
// (flash_attention.cu; the Hopper kernel is opt-in until it is validated on an H100), "mma" forces
// it, "wgmma" forces the Hopper kernel below (a user error where the device or the widths don't
// allow it); any other value is a user error.
void flash_attention_bf16(const FlashAttentionArgs& args, void* stream);

// The Hopper kernel (flash_attention_sm90a.cu: warpgroup MMAs, FlashAttention-3 style), same
// contract and results up to f32 summation order and bf16 rounding of P.
// Whether the current device can run it (compute 9.0; the same check as the grouped GEMM's).
bool flash_attention_wgmma_available();
// Whether it handles these arguments: (dk, dv) in {(64,64), (128,128), (192,128)} (widths only;
// sizes and pointers are checked by the launcher). Always false in a build without CUDA.
bool flash_attention_wgmma_supports(const FlashAttentionArgs& args);
// Enqueues it on `stream`; throws an internal error where flash_attention_wgmma_available() or
// flash_attention_wgmma_supports() is false, for inconsistent sizes, misaligned pointers or a
// failed launch.
void flash_attention_wgmma_bf16(const FlashAttentionArgs& args, void* stream);

}  // namespace refinery::backend::cuda
