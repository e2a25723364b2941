#pragma once
// The one place that knows how an AwqWeight's packed int32 words map to codes (linear_weight.hpp
// states the layout). Used by the CPU linear (dequantize a tile of output rows on the fly), by the
// packer in src/quantize (which writes with the same positions) and by tests and tools.

#include <cstdint>

#include "engine/backend/linear_weight.hpp"

namespace refinery::backend {

// Bit offset, inside one int32 word of qweight/qzeros, of the code of output `lane`
// (0 <= lane < awq_pack_factor(bits)).
//   bits 3/4: lane j sits in nibble kAwqNibbleOfLane[j], i.e. nibble i holds lane
//             [0,2,4,6,1,3,5,7][i] (AutoAWQ GEMM order); bits 8: byte j holds lane j.
int awq_lane_shift(int bits, int lane);
// Mask of one code inside its container (0xF for 3 and 4 bits: 3-bit codes use 4-bit slots).
uint32_t awq_container_mask(int bits);

// Checks dtypes and shapes of `w` against its bits/group_size/out/in (user error naming `name`:
// the tensor, expected vs found, and how to fix).
void validate_awq(const AwqWeight& w, const std::string& name);

// dst[r][c] = (code(r0 + r, c) - zero(r0 + r, c / g)) * scale(c / g, r0 + r) for r in [0, n),
// c in [0, in): the dequantized f32 rows [n, in] of W [out, in]. Host tensors.
void awq_dequantize_rows(const AwqWeight& w, int64_t r0, int64_t n, float* dst);

}  // namespace refinery::backend
