#pragma once
// Round-to-nearest group quantization of a whole model (`refine quantize --method rtn`): every
// quantizable linear (quantizable_linears.hpp) is converted to f32, quantized and packed, one
// linear at a time (the source stays memory-mapped; only packed results are kept).

#include <string>
#include <vector>

#include "engine/model/model_weights.hpp"
#include "quantize/group_quant.hpp"
#include "quantize/quantized_model_writer.hpp"

namespace refinery::quantize {

struct RtnSkip {
  std::string prefix;
  int64_t out = 0, in = 0;
  std::string reason;  // e.g. "in 48 is not a multiple of 32"
};

struct RtnResult {
  QuantizedModelParts parts;
  std::vector<RtnSkip> skipped;  // also in parts.not_converted
  int64_t dense_bytes = 0;       // bytes of the quantized linears' source weights
  int64_t packed_bytes = 0;      // bytes of their qweight + qzeros + scales
};

// Weights must be dense (bf16/f16/f32): a user error otherwise (an already-quantized model).
RtnResult quantize_rtn(const model::ModelWeights& weights, const GroupQuantSpec& spec);

}  // namespace refinery::quantize
