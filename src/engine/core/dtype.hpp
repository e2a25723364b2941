#pragma once
// Element types and their exact conversions.
//
// The enum lists every dtype the safetensors format names, so that the reader can describe any
// file; the engine computes with f32 and stores f32/f16/bf16/f8_e4m3 (and packed int4, later).
// Conversions to f32 are exact; conversions from f32 round to nearest, ties to even, and handle
// NaN, ±inf and subnormals (see dtype.cpp for the per-format rules).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace refinery {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kU32,
  kI32,
  kU64,
  kI64,
  kF16,
  kBF16,
  kF32,
  kF64,
  kF8E4M3,  // OCP E4M3 "fn": no infinities, NaN = S.1111.111, max 448
  kF8E5M2,
  kF8E4M3FNUZ,  // AMD-style e4m3 "fnuz" (bias 8, NaN = 0x80, no -0); read and described only
  kF8E5M2FNUZ,
  kF8E8M0,  // unsigned exponent-only scale format (MX block scales)
  kF4,      // E2M1 packed two per byte (safetensors "F4")
  kF6E2M3,  // packed 6-bit formats (safetensors "F6_E2M3", "F6_E3M2")
  kF6E3M2,
  kC64,     // complex64
};

// Bits one element occupies (4 for F4, 6 for F6_*); most code wants dtype_size_bytes.
std::size_t dtype_bits(DType dtype);
// Bytes of `count` elements; throws if count elements do not fill whole bytes (sub-byte types).
std::size_t dtype_bytes_for(DType dtype, std::size_t count);
// The safetensors name ("F32", "BF16", "F8_E4M3", ...).
std::string_view dtype_name(DType dtype);
// Inverse of dtype_name; std::nullopt for an unknown name.
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType dtype);

// Scalar conversions (bit patterns in, bit patterns out).
float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);
float bf16_to_f32(uint16_t bits);
uint16_t f32_to_bf16(float value);
float f8e4m3_to_f32(uint8_t bits);
uint8_t f32_to_f8e4m3(float value);  // saturates finite values beyond ±448 to ±448; NaN -> NaN

// Converts `count` elements of `src` (of dtype `from`) to f32. Supports f32, f16, bf16, f8_e4m3,
// f64 and the integer types; throws refinery::Error for the others.
void convert_to_f32(DType from, const void* src, float* dst, std::size_t count);
// Converts `count` f32 values to f32, f16, bf16 or f8_e4m3.
void convert_from_f32(DType to, const float* src, void* dst, std::size_t count);

}  // namespace refinery
