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

// AutoAWQ group-quantized weight (GEMM layout, DESIGN §4), W[r, c] for output r and input c:
//   code  = nibble/byte (r % pack) of qweight[c, r / pack], in the packing order of `bits`
//   zero  = the same position of qzeros[c / group_size, r / pack]
//   W     = (code - zero) * scales[c / group_size, r]
// 4 bits: 8 codes per int32 in the order [0,2,4,6,1,3,5,7] (AutoAWQ GEMM, what vLLM loads);
// 3 bits: the same 4-bit container holding codes 0..7; 8 bits: 4 codes per int32 in order
// [0,1,2,3]. Symmetric quantization stores zero = 2^(bits-1) so one formula serves both.
struct AwqWeight {
  Tensor qweight;  // I32 [in, out / pack]   (pack = 8 for bits <= 4, 4 for bits = 8)
  Tensor qzeros;   // I32 [in / group_size, out / pack]
  Tensor scales;   // F16 [in / group_size, out]
  int bits = 4;
  int group_size = 128;
  int64_t out = 0;  // the unpacked shape (qweight's shape does not give `out` for every bits)
  int64_t in = 0;
};

// Codes per int32 of an AwqWeight of `bits` bits (8 for 3 and 4, 4 for 8).
int awq_pack_factor(int bits);

using LinearStorage = std::variant<DenseWeight, Fp8BlockWeight, AwqWeight>;

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
