#pragma once
// The weight of one linear layer y = x Wᵀ + b, as a sum type over the storage formats the engine
// executes (DESIGN §3). A backend's linear() dispatches on the alternative; model code never looks
// inside. Every alternative views checkpoint memory (zero-copy): nothing is dequantized up front.

#include <cstdint>
#include <string>
#include <variant>

#include "engine/core/tensor.hpp"

namespace refinery::backend {

// Plain [out, in] matrix in f32, bf16 or f16.
struct DenseWeight {
  Tensor weight;  // [out, in]
};

// DeepSeek-V3 release format: E4M3 weight and one f32 multiplier per [block_out x block_in] tile.
// W[r, c] = fp8(weight[r, c]) * scale_inv[r / block_out, c / block_in]; the last tile row/column
// may be partial (ceil division).
struct Fp8BlockWeight {
  Tensor weight;     // F8_E4M3 [out, in]
  Tensor scale_inv;  // F32 [ceil(out / block_out), ceil(in / block_in)]
  int block_out = 128;
  int block_in = 128;
};

// Place for AutoAWQ INT4 group-quantized weights (qweight/qzeros/scales, DESIGN §4): a third
// alternative `AwqWeight` goes here, and each backend's linear() gains one visitor branch.
using LinearStorage = std::variant<DenseWeight, Fp8BlockWeight>;

struct LinearWeight {
  LinearStorage storage;
  Tensor bias;       // [out] (f32/bf16/f16), or undefined for no bias
  std::string name;  // HF prefix, e.g. "model.layers.3.self_attn.q_proj" (messages and taps)

  bool defined() const;
  int64_t out_features() const;
  int64_t in_features() const;
  // "bf16[64, 160]" or "fp8-block128x128[64, 160]".
  std::string describe() const;
};

// Checks that the scale grid of `w` has ceil(out/block_out) x ceil(in/block_in) f32 entries; a
// user error naming `w.name` otherwise.
void validate_fp8_block(const Fp8BlockWeight& w, const std::string& name);

}  // namespace refinery::backend
