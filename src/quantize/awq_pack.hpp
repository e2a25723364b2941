#pragma once
// QuantizedMatrix <-> AutoAWQ GEMM tensors (layout in engine/backend/linear_weight.hpp; the word
// positions come from engine/backend/awq_dequant.hpp, shared with the engine's dequantization).

#include "engine/backend/linear_weight.hpp"
#include "quantize/group_quant.hpp"

namespace refinery::quantize {

// Host tensors: qweight I32 [in, out/pack], qzeros I32 [in/g, out/pack], scales F16 [in/g, out].
// `out` must be a multiple of the pack factor (usable_group_size checks it; else internal error).
backend::AwqWeight pack_awq(const QuantizedMatrix& q);
// The inverse (tests, tools); zero_point is reported true (the file does not say; symmetric
// matrices come back with their stored zero 2^(bits-1)).
QuantizedMatrix unpack_awq(const backend::AwqWeight& w);

}  // namespace refinery::quantize
