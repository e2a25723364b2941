#pragma once
// Group quantization of a linear weight W [out, in] (DESIGN §4): every run of `group_size`
// consecutive inputs of one output row shares one fp16 scale (and, asymmetric, one integer zero
// point). Semantics of AutoAWQ's pseudo_quantize_tensor (awq/quantize/quantizer.py):
//   asymmetric: max_int = 2^bits - 1, scale = max(max - min, 1e-5) / max_int,
//               zero = clamp(-round(min / scale), 0, max_int),
//               q = clamp(round(w / scale) + zero, 0, max_int), w' = (q - zero) * scale
//   symmetric:  max_int = 2^(bits-1) - 1, min_int = -2^(bits-1), scale = max(absmax, 1e-5) / max_int,
//               q = clamp(round(w / scale), min_int, max_int), w' = q * scale
// round() is round-half-to-even (torch.round). One difference on purpose: the scale is rounded
// to fp16 (what the file stores) BEFORE the codes are computed, so fake_quantize(w) equals
// dequantize(quantize_groups(w)) and the engine's dequantization of the packed file bit for bit.
// Symmetric codes are stored shifted, code = q + 2^(bits-1) with zero = 2^(bits-1), so one
// formula (code - zero) * scale dequantizes both.

#include <cstdint>
#include <string_view>
#include <vector>

namespace refinery::quantize {

struct GroupQuantSpec {
  int bits = 4;           // 3, 4 or 8
  int group_size = 128;   // 32, 64 or 128 (inputs per scale)
  bool zero_point = true; // asymmetric (AutoAWQ default); false: symmetric
};

// Throws a user error unless bits is 3/4/8 and group_size is 32/64/128.
void validate_spec(const GroupQuantSpec& spec);

// In place: w (f32 [out, in], row-major) := dequantize(quantize(w)). in % group_size must be 0
// (else a user error naming `what`).
void fake_quantize(float* w, int64_t out, int64_t in, const GroupQuantSpec& spec,
                   std::string_view what = "weight");

struct QuantizedMatrix {
  int64_t out = 0, in = 0;
  GroupQuantSpec spec;
  std::vector<uint8_t> codes;  // [out, in], 0 .. 2^bits - 1
  std::vector<uint8_t> zeros;  // [out, in / group_size]
  std::vector<float> scales;   // [out, in / group_size], every value exactly an fp16
};

QuantizedMatrix quantize_groups(const float* w, int64_t out, int64_t in, const GroupQuantSpec& spec,
                                std::string_view what = "weight");
std::vector<float> dequantize(const QuantizedMatrix& q);  // [out, in]

// The group size a linear [out, in] is quantized with, 0 when it stays unquantized. Rule: the
// requested size if it divides `in`, else the largest of requested/2, requested/4, ... that is
// >= 32 and divides `in` (AutoAWQ and vLLM use multiples of 32); 0 when none does, or when `out`
// is not a multiple of the pack factor (8 codes per int32 for 3/4 bits, 4 for 8 bits).
// NOTE: transformers and vLLM read ONE group_size from quantization_config; a layer given a
// smaller group is executed by our engine (it reads the size off the scales' shape) but makes the
// file unloadable there; the writer warns and records it in refinery.json.
int usable_group_size(int64_t in, int64_t out, const GroupQuantSpec& spec);

}  // namespace refinery::quantize
