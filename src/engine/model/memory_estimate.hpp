#pragma once
// How much GPU memory a model and a run need, estimated before anything is loaded, so that a run
// that cannot fit stops at once with the numbers and what to change, instead of failing in the
// middle of a forward with a cudaMalloc error (DESIGN §1.5).
//
// The estimate has five parts (memory_estimate.cpp gives every formula with its shapes):
//   weights      the checkpoint's tensors as stored (FP8 stays FP8, bf16 stays bf16): the CUDA
//                backend copies each weight to the device once, unconverted;
//   KV cache     keys and values of every layer for the cache capacity. MLA caches the EXPANDED
//                keys [heads, nope + rope] and values [heads, v] per position, not the latent
//                (see kv_cache.hpp), so this is larger than model_inspection's per-token figure;
//   activations  the peak of the transient tensors of one forward: the residual stream plus the
//                live tensors of the most demanding layer (attention or MLP/MoE), +10%;
//   logits       the LM-head buffers: one f32 chunk of rows x vocab, or for top-k a vocabulary
//                chunk over all rows plus the top-k outputs, +10%;
//   workspace    a fixed allowance for cuBLAS(Lt) workspaces, lazily loaded kernels, allocation
//                rounding and dequantization scratch, plus the RoPE tables.
// It is deliberately conservative: the logits and the layer peak never coexist but are summed.

#include <cstdint>
#include <string>

#include "engine/io/checkpoint.hpp"
#include "engine/model/model_config.hpp"

namespace refinery::model {

struct RunShape {
  int64_t tokens_per_forward = 2048;  // rows of one forward (batch x sequence length)
  int64_t cache_positions = 2048;     // KV-cache capacity (longest sequence)
  int64_t top_k = 0;                  // 0: full logits are produced in chunks of logits_chunk_rows
  int64_t logits_chunk_rows = 256;
  int activation_bytes = 2;           // bf16 activations on the GPU (f32 = 4)
  // activation_bytes also sizes the KV cache elements (the cache has the activation dtype).
};

struct MemoryEstimate {
  int64_t weight_bytes = 0;      // as stored in the checkpoint (FP8 stays FP8, bf16 stays bf16)
  int64_t kv_cache_bytes = 0;
  int64_t activation_bytes = 0;  // peak transient buffers of one forward (+10%)
  int64_t logits_bytes = 0;      // LM-head chunk buffers (+ top-k outputs) (+10%)
  int64_t workspace_bytes = 0;   // fixed allowance (kWorkspaceAllowanceBytes) + RoPE tables

  int64_t total() const;
  // One line per part and a total, e.g. "  KV cache      1.2 GiB  (keys and values, ...)".
  std::string describe() const;
};

// The fixed part of workspace_bytes: cuBLAS/cuBLASLt workspaces, kernel code loaded lazily on
// first use, the f32 scratch of the FP8/f16 weight path (64 MiB, linear.cu), allocation rounding
// over thousands of weight tensors, and the CUDA context when free memory was read before it
// existed. 1 GiB: a little over 1% of an 80 GB card.
inline constexpr int64_t kWorkspaceAllowanceBytes = int64_t{1} << 30;
// Width of one vocabulary chunk of the (planned) fused LM-head top-k.
inline constexpr int64_t kTopkVocabChunk = 16384;

// `checkpoint_weight_bytes`: the sum of the checkpoint's tensor bytes (io::Checkpoint::total_bytes).
// `run` values must be positive (top_k >= 0, activation_bytes 2 or 4): an internal error otherwise,
// since the CLI validates its flags before it asks for an estimate.
MemoryEstimate estimate_memory(const ModelConfig& config, int64_t checkpoint_weight_bytes,
                               const RunShape& run);

// The sum of every tensor's bytes in `checkpoint`, as int64 (weights as stored).
int64_t checkpoint_weight_bytes(const io::Checkpoint& checkpoint);

// Throws a user error when estimate.total() > free_bytes: the message gives the estimate parts,
// the free and total device bytes, the device name, and the fix (a smaller --seq-len / batch, a
// smaller --top-k when the logits part matters, a GPU with more memory, or the FP8/AWQ checkpoint).
void require_memory_fits(const MemoryEstimate& estimate, int64_t free_bytes, int64_t total_bytes,
                         const std::string& device_name);

}  // namespace refinery::model
