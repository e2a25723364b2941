// dtype metadata and scalar/array conversions: hand-written bit patterns, exhaustive round trips
// and a correct-rounding oracle. The golden comparison with numpy/ml_dtypes is in
// dtype_golden_test.cpp.
#include "engine/core/dtype.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/core/error.hpp"

namespace refinery {
namespace {

float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

uint32_t to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- metadata ---------------------------------------------------------------------------------

TEST(DTypeMeta, NamesRoundTripForEveryDType) {
  const char* names[] = {"BOOL", "U8",  "I8",      "U16",     "I16",     "U32",    "I32",
                         "U64",  "I64", "F16",     "BF16",    "F32",     "F64",    "F8_E4M3",
                         "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2", "C64"};
  for (const char* name : names) {
    auto dtype = dtype_from_name(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(dtype_name(*dtype), name);
  }
  EXPECT_EQ(dtype_from_name("BF16"), DType::kBF16);
  EXPECT_EQ(dtype_from_name("F8_E4M3"), DType::kF8E4M3);
}

TEST(DTypeMeta, UnknownNamesAreNullopt) {
  EXPECT_FALSE(dtype_from_name("").has_value());
  EXPECT_FALSE(dtype_from_name("f32").has_value());  // names are case-sensitive, as in safetensors
  EXPECT_FALSE(dtype_from_name("FP32").has_value());
  EXPECT_FALSE(dtype_from_name("F8_E4M3FN").has_value());
  EXPECT_FALSE(dtype_from_name("BF16 ").has_value());
}

TEST(DTypeMeta, BitsAndBytes) {
  EXPECT_EQ(dtype_bits(DType::kF32), 32u);
  EXPECT_EQ(dtype_bits(DType::kBF16), 16u);
  EXPECT_EQ(dtype_bits(DType::kF8E4M3), 8u);
  EXPECT_EQ(dtype_bits(DType::kF4), 4u);
  EXPECT_EQ(dtype_bits(DType::kF6E2M3), 6u);
  EXPECT_EQ(dtype_bits(DType::kC64), 64u);
  EXPECT_EQ(dtype_bytes_for(DType::kBF16, 10), 20u);
  EXPECT_EQ(dtype_bytes_for(DType::kF32, 0), 0u);
  EXPECT_EQ(dtype_bytes_for(DType::kI64, 3), 24u);
  EXPECT_EQ(dtype_bytes_for(DType::kF4, 4), 2u);
  EXPECT_EQ(dtype_bytes_for(DType::kF6E3M2, 4), 3u);
  EXPECT_EQ(dtype_bytes_for(DType::kBool, 7), 7u);
  EXPECT_THROW(dtype_bytes_for(DType::kF4, 3), Error);
  EXPECT_THROW(dtype_bytes_for(DType::kF6E2M3, 2), Error);
  try {
    dtype_bytes_for(DType::kF4, 3);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_NE(std::string(e.what()).find("F4"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(dtype_is_float(DType::kBF16));
  EXPECT_TRUE(dtype_is_float(DType::kF8E4M3));
  EXPECT_FALSE(dtype_is_float(DType::kI32));
  EXPECT_FALSE(dtype_is_float(DType::kBool));
}

// ---- f16 --------------------------------------------------------------------------------------

TEST(DTypeF16, KnownPatterns) {
  struct Case { float value; uint16_t bits; };
  const Case exact[] = {
      {1.0f, 0x3C00},          {-2.0f, 0xC000},       {65504.0f, 0x7BFF},  // max
      {-65504.0f, 0xFBFF},     {0x1p-14f, 0x0400},    // min normal
      {0x1p-24f, 0x0001},      // min subnormal
      {0x3FFp-24f, 0x03FF},    // max subnormal
      {0.0f, 0x0000},          {-0.0f, 0x8000},       {kInf, 0x7C00},      {-kInf, 0xFC00},
      {0.333251953125f, 0x3555},
  };
  for (const auto& c : exact) {
    EXPECT_EQ(f32_to_f16(c.value), c.bits) << c.value;
    EXPECT_EQ(to_bits(f16_to_f32(c.bits)), to_bits(c.value)) << std::hex << c.bits;
  }
  // Ties go to the even neighbour, in both directions.
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3C00);      // between 0x3C00 (even) and 0x3C01
  EXPECT_EQ(f32_to_f16(1.0f + 0x3p-11f), 0x3C02);      // between 0x3C01 and 0x3C02 (even)
  EXPECT_EQ(f32_to_f16(-(1.0f + 0x3p-11f)), 0xBC02);
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);             // half the min subnormal: to +0
  EXPECT_EQ(f32_to_f16(-0x1p-25f), 0x8000);            // to -0
  EXPECT_EQ(f32_to_f16(0x3p-25f), 0x0002);             // 1.5 subnormal ulps: up to even
  EXPECT_EQ(f32_to_f16(0x7FFp-25f), 0x0400);           // max subnormal + half: carry to min normal
  // Just off the ties.
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + 0x1p-11f, 2.0f)), 0x3C01);
  EXPECT_EQ(f32_to_f16(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  EXPECT_EQ(f32_to_f16(0x1p-26f), 0x0000);
  EXPECT_EQ(f32_to_f16(from_bits(0x00000001)), 0x0000);  // f32 min subnormal
  // Overflow: 65520 is the tie between 65504 (odd mantissa) and 65536 (= inf): RNE gives inf.
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);
  EXPECT_EQ(f32_to_f16(-1e10f), 0xFC00);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::max()), 0x7C00);
}

TEST(DTypeF16, NaNStaysNaN) {
  const uint32_t nans[] = {0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0x7F802000};
  for (uint32_t bits : nans) {
    const uint16_t h = f32_to_f16(from_bits(bits));
    EXPECT_EQ(h & 0x7C00, 0x7C00) << std::hex << bits;
    EXPECT_NE(h & 0x03FF, 0) << std::hex << bits;       // not inf
    EXPECT_NE(h & 0x0200, 0) << std::hex << bits;       // quiet
    EXPECT_EQ(h >> 15, bits >> 31) << std::hex << bits; // sign kept
  }
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0xFFFF)));
}

// ---- bf16 -------------------------------------------------------------------------------------

TEST(DTypeBF16, KnownPatterns) {
  struct Case { uint32_t f32_bits; uint16_t bits; };
  const Case exact[] = {
      {0x3F800000, 0x3F80},  // 1.0
      {0xC0000000, 0xC000},  // -2.0
      {0x7F7F0000, 0x7F7F},  // max, 3.3895314e38
      {0x00800000, 0x0080},  // min normal 2^-126
      {0x00010000, 0x0001},  // min subnormal 2^-133
      {0x00000000, 0x0000},  {0x80000000, 0x8000},  // ±0
      {0x7F800000, 0x7F80},  {0xFF800000, 0xFF80},  // ±inf
  };
  for (const auto& c : exact) {
    EXPECT_EQ(f32_to_bf16(from_bits(c.f32_bits)), c.bits) << std::hex << c.f32_bits;
    EXPECT_EQ(to_bits(bf16_to_f32(c.bits)), c.f32_bits) << std::hex << c.bits;
  }
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC000), -2.0f);
  // Ties to even in both directions, normal and subnormal.
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808000)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F818000)), 0x3F82);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808001)), 0x3F81);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F807FFF)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x00008000)), 0x0000);
  EXPECT_EQ(f32_to_bf16(from_bits(0x00018000)), 0x0002);
  EXPECT_EQ(f32_to_bf16(from_bits(0x807F8000)), 0x8080);  // max subnormal tie carries to -min normal
  // Overflow: the tie above max (odd) goes to inf; just below stays max.
  EXPECT_EQ(f32_to_bf16(from_bits(0x7F7F8000)), 0x7F80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x7F7F7FFF)), 0x7F7F);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::max()), 0xFF80);
}

TEST(DTypeBF16, NaNStaysNaN) {
  // A signalling NaN whose payload lives only in the low half must not truncate to inf.
  const uint32_t nans[] = {0x7F800001, 0xFF800001, 0x7FC00000, 0xFFFFFFFF, 0x7F80FFFF};
  for (uint32_t bits : nans) {
    const uint16_t b = f32_to_bf16(from_bits(bits));
    EXPECT_EQ(b & 0x7F80, 0x7F80) << std::hex << bits;
    EXPECT_NE(b & 0x0040, 0) << std::hex << bits;  // quiet, hence not inf
    EXPECT_EQ(b >> 15, bits >> 31);
  }
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC0)));
  EXPECT_TRUE(std::isnan(bf16_to_f32(0xFF81)));
}

// ---- f8 e4m3 ----------------------------------------------------------------------------------

TEST(DTypeF8E4M3, KnownPatterns) {
  struct Case { float value; uint8_t bits; };
  const Case exact[] = {
      {1.0f, 0x38},      {-2.0f, 0xC0},     {448.0f, 0x7E},   {-448.0f, 0xFE},  // max
      {0x1p-6f, 0x08},   // min normal
      {0x1p-9f, 0x01},   // min subnormal
      {0x7p-9f, 0x07},   // max subnormal
      {0.0f, 0x00},      {-0.0f, 0x80},     {1.125f, 0x39},   {240.0f, 0x77},
      {0.875f, 0x36},
  };
  for (const auto& c : exact) {
    EXPECT_EQ(f32_to_f8e4m3(c.value), c.bits) << c.value;
    EXPECT_EQ(to_bits(f8e4m3_to_f32(c.bits)), to_bits(c.value)) << std::hex << int(c.bits);
  }
  // Ties to even.
  EXPECT_EQ(f32_to_f8e4m3(1.0625f), 0x38);   // between 1.0 (0x38) and 1.125 (0x39)
  EXPECT_EQ(f32_to_f8e4m3(1.1875f), 0x3A);   // between 1.125 and 1.25 (0x3A)
  EXPECT_EQ(f32_to_f8e4m3(-1.1875f), 0xBA);
  EXPECT_EQ(f32_to_f8e4m3(0x1p-10f), 0x00);  // half the min subnormal
  EXPECT_EQ(f32_to_f8e4m3(-0x1p-10f), 0x80);
  EXPECT_EQ(f32_to_f8e4m3(0x3p-10f), 0x02);
  EXPECT_EQ(f32_to_f8e4m3(0xFp-10f), 0x08);  // max subnormal + half: carry to min normal
  EXPECT_EQ(f32_to_f8e4m3(std::nextafter(1.0625f, 2.0f)), 0x39);
  // Saturation (like __NV_SATFINITE): 464 is the tie between 448 and the NaN slot, and goes to
  // 448 by RNE; beyond it, and ±inf, saturate to ±448.
  EXPECT_EQ(f32_to_f8e4m3(464.0f), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(464.1f), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(480.0f), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(1e30f), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(-1e30f), 0xFE);
  EXPECT_EQ(f32_to_f8e4m3(kInf), 0x7E);
  EXPECT_EQ(f32_to_f8e4m3(-kInf), 0xFE);
}

TEST(DTypeF8E4M3, NaN) {
  EXPECT_EQ(f32_to_f8e4m3(kNaN), 0x7F);
  EXPECT_EQ(f32_to_f8e4m3(-kNaN), 0xFF);
  EXPECT_EQ(f32_to_f8e4m3(from_bits(0x7F800001)), 0x7F);
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0x7F)));
  EXPECT_TRUE(std::isnan(f8e4m3_to_f32(0xFF)));
  // The E4M3FN exponent 15 is finite except for mantissa 111: 0x7E is 448, 0x78 is 256.
  EXPECT_EQ(f8e4m3_to_f32(0x78), 256.0f);
  EXPECT_EQ(f8e4m3_to_f32(0xF8), -256.0f);
}

// ---- exhaustive round trips -------------------------------------------------------------------

TEST(DTypeRoundTrip, EveryF16Pattern) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float value = f16_to_f32(bits);
    const bool is_nan = (bits & 0x7C00) == 0x7C00 && (bits & 0x03FF) != 0;
    ASSERT_EQ(std::isnan(value), is_nan) << std::hex << b;
    if (is_nan) {
      const uint16_t back = f32_to_f16(value);
      ASSERT_TRUE((back & 0x7C00) == 0x7C00 && (back & 0x03FF) != 0) << std::hex << b;
      ASSERT_EQ(back >> 15, bits >> 15);
    } else {
      ASSERT_EQ(f32_to_f16(value), bits) << std::hex << b;
    }
  }
}

TEST(DTypeRoundTrip, EveryBF16Pattern) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float value = bf16_to_f32(bits);
    const bool is_nan = (bits & 0x7F80) == 0x7F80 && (bits & 0x007F) != 0;
    ASSERT_EQ(std::isnan(value), is_nan) << std::hex << b;
    if (is_nan)
      ASSERT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(value)))) << std::hex << b;
    else
      ASSERT_EQ(f32_to_bf16(value), bits) << std::hex << b;
  }
}

TEST(DTypeRoundTrip, EveryF8E4M3Pattern) {
  int nan_count = 0;
  for (uint32_t b = 0; b < 0x100; ++b) {
    const auto bits = static_cast<uint8_t>(b);
    const float value = f8e4m3_to_f32(bits);
    if (std::isnan(value)) {
      ++nan_count;
      ASSERT_EQ(bits & 0x7F, 0x7F);
      ASSERT_EQ(f32_to_f8e4m3(value), bits);  // the NaN (of that sign) comes back
    } else {
      ASSERT_FALSE(std::isinf(value));
      ASSERT_EQ(f32_to_f8e4m3(value), bits) << std::hex << b;
    }
  }
  EXPECT_EQ(nan_count, 2);
}

}  // namespace
}  // namespace refinery
