// Value conversions between f32 and the storage dtypes (f16, bf16, f8_e4m3).
//
// Rules (tested against numpy / ml_dtypes golden values and exhaustive round trips):
//  - to f32: exact for every format (f32 holds every f16, bf16 and e4m3 value, subnormals included).
//  - from f32: round to nearest, ties to even, computed on the integer bits in one step (no double
//    rounding), so subnormal results are exact and correctly rounded as well.
//  - NaN stays NaN: the sign and the top payload bits are kept and the quiet bit is set.
//  - ±0 keeps its sign.
//  - f16: finite values that round beyond 65504 become ±inf (IEEE 754 RNE overflow); ±inf -> ±inf.
//  - bf16: same exponent range as f32, so only values that round past the largest bf16
//    (3.3895e38) overflow to ±inf; ±inf -> ±inf.
//  - f8_e4m3 (OCP E4M3FN: bias 7, no infinities, 0x7F/0xFF are NaN, largest finite 448):
//    saturating. A value whose correctly rounded magnitude exceeds 448, and ±inf, become ±448, as
//    NVIDIA's __nv_cvt_float_to_fp8(..., __NV_SATFINITE, __NV_E4M3) does. (ml_dtypes'
//    float8_e4m3fn cast and __NV_NOSAT turn those into NaN instead; we do not, because a scale
//    search that overshoots should clip, not poison the weights.) Values in (448, 464] round to
//    448 by RNE anyway; 464 is the tie between 448 and the would-be 480 and goes to even (448).
#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"

namespace refinery {
namespace {

uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Rounds a finite, nonzero f32 magnitude (`abs_bits` = bits without the sign) to a binary format
// with `mant_bits` stored mantissa bits and minimum normal exponent `emin`, ties to even. Returns
// the magnitude's bit pattern in that format assuming an unbounded exponent range above; the
// caller handles overflow (pattern beyond the largest finite one).
//
// The target's value grid near x has spacing 2^(e_t - mant_bits) where e_t = max(exponent(x), emin)
// (below emin the grid is the fixed subnormal spacing). The pattern of q * spacing is
// ((e_t - emin) << mant_bits) + q: for normals q includes the implicit leading one, which adds the
// missing 1 to the exponent field; for subnormals e_t = emin and q < 2^mant_bits. A rounding carry
// (q reaching 2^(mant_bits+1), or a subnormal reaching 2^mant_bits) rolls into the exponent field
// by the same addition.
uint32_t round_magnitude(uint32_t abs_bits, int mant_bits, int emin) {
  const int f32_exp_field = static_cast<int>(abs_bits >> 23);
  uint32_t significand;  // x = significand * 2^(exponent - 23)
  int exponent;
  if (f32_exp_field == 0) {  // f32 subnormal: 0.mant * 2^-126
    significand = abs_bits & 0x7FFFFFu;
    exponent = -126;
  } else {
    significand = (abs_bits & 0x7FFFFFu) | 0x800000u;
    exponent = f32_exp_field - 127;
  }
  const int target_exponent = std::max(exponent, emin);
  // Right shift that maps the significand onto the target grid; always > 0 here because the
  // target has fewer mantissa bits than f32 and target_exponent >= exponent.
  const int shift = (target_exponent - mant_bits) - (exponent - 23);
  uint32_t q;
  if (shift >= 26) {
    q = 0;  // x < 2^24 * 2^-shift * spacing <= spacing / 4: rounds to zero
  } else {
    q = significand >> shift;
    const uint32_t remainder = significand & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    if (remainder > half || (remainder == half && (q & 1u))) ++q;
  }
  return (static_cast<uint32_t>(target_exponent - emin) << mant_bits) + q;
}

constexpr int kF16MantBits = 10;
constexpr int kF16Emin = -14;
constexpr uint32_t kF16Inf = 0x7C00u;
constexpr int kE4M3MantBits = 3;
constexpr int kE4M3Emin = -6;
constexpr uint32_t kE4M3MaxFinite = 0x7Eu;  // 1.75 * 2^8 = 448
constexpr uint8_t kE4M3NaN = 0x7Fu;

// Every e4m3 byte decoded once: 256 floats, shared by the scalar and array paths.
std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> table{};
  for (int b = 0; b < 256; ++b) {
    const int exp_field = (b >> 3) & 0xF;
    const int mant = b & 0x7;
    float magnitude;
    if (exp_field == 0xF && mant == 0x7) {
      magnitude = std::numeric_limits<float>::quiet_NaN();
    } else if (exp_field == 0) {
      magnitude = std::ldexp(static_cast<float>(mant), kE4M3Emin - kE4M3MantBits);  // mant * 2^-9
    } else {
      magnitude = std::ldexp(static_cast<float>(8 + mant), exp_field - 7 - kE4M3MantBits);
    }
    table[b] = (b & 0x80) ? -magnitude : magnitude;
  }
  return table;
}

const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> table = make_e4m3_table();
  return table;
}

// Loads through memcpy so that unaligned sources (e.g. a memory-mapped file) are fine.
template <typename T>
T load(const void* base, std::size_t index) {
  T value;
  std::memcpy(&value, static_cast<const unsigned char*>(base) + index * sizeof(T), sizeof(T));
  return value;
}

template <typename T>
void store(void* base, std::size_t index, T value) {
  std::memcpy(static_cast<unsigned char*>(base) + index * sizeof(T), &value, sizeof(T));
}

// f64 -> f32 with IEEE RNE and overflow to ±inf. A plain static_cast of a finite double outside
// the float range is undefined behaviour in C++, so the overflow boundary is handled here: the
// largest float is (2 - 2^-23) * 2^127; a double at or beyond it plus half an ulp (2^103) rounds
// to infinity (the tie goes to inf because FLT_MAX has an odd mantissa).
float f64_to_f32(double value) {
  if (std::isnan(value)) return static_cast<float>(value);
  const double overflow_threshold = static_cast<double>(FLT_MAX) + std::ldexp(1.0, 103);
  if (std::fabs(value) >= overflow_threshold)
    return value > 0 ? std::numeric_limits<float>::infinity()
                     : -std::numeric_limits<float>::infinity();
  if (std::fabs(value) > static_cast<double>(FLT_MAX)) return value > 0 ? FLT_MAX : -FLT_MAX;
  return static_cast<float>(value);
}

template <typename T, typename F>
void convert_loop(const void* src, float* dst, std::size_t count, F&& to_float) {
  const auto n = static_cast<std::ptrdiff_t>(count);
#pragma omp parallel for schedule(static) if (n > (1 << 18))
  for (std::ptrdiff_t i = 0; i < n; ++i) dst[i] = to_float(load<T>(src, static_cast<std::size_t>(i)));
}

template <typename T, typename F>
void convert_out_loop(const float* src, void* dst, std::size_t count, F&& from_float) {
  const auto n = static_cast<std::ptrdiff_t>(count);
#pragma omp parallel for schedule(static) if (n > (1 << 18))
  for (std::ptrdiff_t i = 0; i < n; ++i)
    store<T>(dst, static_cast<std::size_t>(i), from_float(src[i]));
}

}  // namespace

float f16_to_f32(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exp_field = (bits >> 10) & 0x1Fu;
  const uint32_t mant = bits & 0x3FFu;
  if (exp_field == 0x1F)  // inf or NaN: keep the payload in the top mantissa bits
    return bits_float(sign | 0x7F800000u | (mant << 13));
  if (exp_field == 0) {
    // Zero or subnormal: mant * 2^-24, exact in f32 (a normal float for every mant > 0).
    const float magnitude = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return bits_float(sign | float_bits(magnitude));
  }
  return bits_float(sign | ((exp_field + 112u) << 23) | (mant << 13));  // rebias 15 -> 127
}

uint16_t f32_to_f16(float value) {
  const uint32_t bits = float_bits(value);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u)  // NaN: quiet it, keep the top 9 payload bits
    return static_cast<uint16_t>(sign | 0x7E00u | ((abs_bits >> 13) & 0x1FFu));
  if (abs_bits == 0x7F800000u) return static_cast<uint16_t>(sign | kF16Inf);
  if (abs_bits == 0) return sign;
  const uint32_t rounded = round_magnitude(abs_bits, kF16MantBits, kF16Emin);
  return static_cast<uint16_t>(sign | std::min(rounded, kF16Inf));
}

float bf16_to_f32(uint16_t bits) { return bits_float(static_cast<uint32_t>(bits) << 16); }

uint16_t f32_to_bf16(float value) {
  const uint32_t bits = float_bits(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u)  // NaN: keep sign and top payload, set the quiet bit
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  // bf16 is the top half of f32: add just under half an ulp, plus one if the kept part is odd,
  // and truncate. Carries roll into the exponent; the largest finite values round to inf, and
  // inf itself stays inf (its low half is zero).
  const uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f8e4m3_to_f32(uint8_t bits) { return e4m3_table()[bits]; }

uint8_t f32_to_f8e4m3(float value) {
  const uint32_t bits = float_bits(value);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits > 0x7F800000u) return static_cast<uint8_t>(sign | kE4M3NaN);  // the only NaN
  if (abs_bits == 0x7F800000u) return static_cast<uint8_t>(sign | kE4M3MaxFinite);  // saturate
  if (abs_bits == 0) return sign;
  const uint32_t rounded = round_magnitude(abs_bits, kE4M3MantBits, kE4M3Emin);
  return static_cast<uint8_t>(sign | std::min(rounded, kE4M3MaxFinite));
}

void convert_to_f32(DType from, const void* src, float* dst, std::size_t count) {
  switch (from) {
    case DType::kF32:
      if (count > 0) std::memmove(dst, src, count * sizeof(float));
      return;
    case DType::kF16:
      return convert_loop<uint16_t>(src, dst, count, f16_to_f32);
    case DType::kBF16:
      return convert_loop<uint16_t>(src, dst, count, bf16_to_f32);
    case DType::kF8E4M3: {
      const auto& table = e4m3_table();
      return convert_loop<uint8_t>(src, dst, count, [&](uint8_t b) { return table[b]; });
    }
    case DType::kF64:
      return convert_loop<double>(src, dst, count, f64_to_f32);
    case DType::kBool:
      return convert_loop<uint8_t>(src, dst, count, [](uint8_t b) { return b ? 1.0f : 0.0f; });
    // Integers: the nearest float (ties to even) for magnitudes beyond 2^24.
    case DType::kU8:
      return convert_loop<uint8_t>(src, dst, count, [](uint8_t v) { return float(v); });
    case DType::kI8:
      return convert_loop<int8_t>(src, dst, count, [](int8_t v) { return float(v); });
    case DType::kU16:
      return convert_loop<uint16_t>(src, dst, count, [](uint16_t v) { return float(v); });
    case DType::kI16:
      return convert_loop<int16_t>(src, dst, count, [](int16_t v) { return float(v); });
    case DType::kU32:
      return convert_loop<uint32_t>(src, dst, count, [](uint32_t v) { return float(v); });
    case DType::kI32:
      return convert_loop<int32_t>(src, dst, count, [](int32_t v) { return float(v); });
    case DType::kU64:
      return convert_loop<uint64_t>(src, dst, count, [](uint64_t v) { return float(v); });
    case DType::kI64:
      return convert_loop<int64_t>(src, dst, count, [](int64_t v) { return float(v); });
    default:
      throw_user_error("cannot convert ", dtype_name(from),
                       " values to F32: supported source dtypes are F32, F16, BF16, F8_E4M3, F64, "
                       "BOOL and the integer types (block-scaled and packed formats need their "
                       "own dequantization)");
  }
}

void convert_from_f32(DType to, const float* src, void* dst, std::size_t count) {
  switch (to) {
    case DType::kF32:
      if (count > 0) std::memmove(dst, src, count * sizeof(float));
      return;
    case DType::kF16:
      return convert_out_loop<uint16_t>(src, dst, count, f32_to_f16);
    case DType::kBF16:
      return convert_out_loop<uint16_t>(src, dst, count, f32_to_bf16);
    case DType::kF8E4M3:
      return convert_out_loop<uint8_t>(src, dst, count, f32_to_f8e4m3);
    default:
      throw_user_error("cannot convert F32 values to ", dtype_name(to),
                       ": supported target dtypes are F32, F16, BF16 and F8_E4M3");
  }
}

}  // namespace refinery
