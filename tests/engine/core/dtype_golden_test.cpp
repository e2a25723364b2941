// f32 -> f16/bf16/f8_e4m3 against references no one here wrote (numpy float16, ml_dtypes bfloat16
// and float8_e4m3fn; tests/fixtures/make_dtype_golden.py froze them into data/dtype_golden.bin),
// plus a correct-rounding oracle over a sweep of f32 bit patterns, and the array conversions.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"

namespace refinery {
namespace {

float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

struct GoldenRecord {
  uint32_t f32_bits;
  uint16_t f16;
  uint16_t bf16;
  uint8_t e4m3;
  uint8_t flags;
};
constexpr uint8_t kE4M3Saturated = 1;  // ml_dtypes said NaN; the file holds the saturated value

std::vector<GoldenRecord> load_golden() {
  const std::string path =
      std::string(REFINERY_SOURCE_DIR) + "/tests/engine/core/data/dtype_golden.bin";
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  std::vector<GoldenRecord> records;
  if (bytes.size() < 16 || std::memcmp(bytes.data(), "RFDTGLD1", 8) != 0) {
    ADD_FAILURE() << path << " is not a golden file";
    return records;
  }
  auto u32 = [&](std::size_t at) {
    return uint32_t{bytes[at]} | uint32_t{bytes[at + 1]} << 8 | uint32_t{bytes[at + 2]} << 16 |
           uint32_t{bytes[at + 3]} << 24;
  };
  const uint32_t count = u32(8);
  const uint32_t record_size = u32(12);
  if (record_size != 10 || bytes.size() != 16 + std::size_t{count} * record_size) {
    ADD_FAILURE() << path << ": bad record size or length";
    return records;
  }
  for (uint32_t i = 0; i < count; ++i) {
    const std::size_t at = 16 + std::size_t{i} * record_size;
    records.push_back({u32(at), static_cast<uint16_t>(bytes[at + 4] | bytes[at + 5] << 8),
                       static_cast<uint16_t>(bytes[at + 6] | bytes[at + 7] << 8), bytes[at + 8],
                       bytes[at + 9]});
  }
  return records;
}

TEST(DTypeGolden, MatchesNumpyAndMlDtypes) {
  const auto records = load_golden();
  ASSERT_GT(records.size(), 4000u);
  int saturated = 0, nans = 0, failures = 0;
  for (const auto& r : records) {
    const float x = from_bits(r.f32_bits);
    if (std::isnan(x)) {
      ++nans;
      EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(x)))) << std::hex << r.f32_bits;
      EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(x)))) << std::hex << r.f32_bits;
      EXPECT_TRUE(std::isnan(f8e4m3_to_f32(f32_to_f8e4m3(x)))) << std::hex << r.f32_bits;
      // The reference also said NaN.
      EXPECT_TRUE(std::isnan(f16_to_f32(r.f16)));
      EXPECT_TRUE(std::isnan(bf16_to_f32(r.bf16)));
      EXPECT_TRUE(std::isnan(f8e4m3_to_f32(r.e4m3)));
      continue;
    }
    if (f32_to_f16(x) != r.f16 || f32_to_bf16(x) != r.bf16 || f32_to_f8e4m3(x) != r.e4m3) {
      if (++failures <= 20)
        ADD_FAILURE() << "x = " << x << " (bits 0x" << std::hex << r.f32_bits << "): f16 0x"
                      << f32_to_f16(x) << " want 0x" << r.f16 << ", bf16 0x" << f32_to_bf16(x)
                      << " want 0x" << r.bf16 << ", e4m3 0x" << int(f32_to_f8e4m3(x))
                      << " want 0x" << int(r.e4m3);
    }
    if (r.flags & kE4M3Saturated) {
      ++saturated;
      // Only values beyond the rounding boundary of 448 may differ from ml_dtypes.
      EXPECT_GT(std::fabs(x), 464.0f) << x;
      EXPECT_EQ(r.e4m3 & 0x7F, 0x7E);
    }
  }
  EXPECT_EQ(failures, 0);
  EXPECT_GT(saturated, 0);  // the file exercises the documented difference
  EXPECT_GT(nans, 0);
}

// ---- correct rounding oracle ------------------------------------------------------------------

struct Format {
  const char* name;
  uint32_t (*encode)(float);   // f32 -> bit pattern (widened)
  float (*decode)(uint32_t);   // bit pattern -> f32
  uint32_t sign_bit;
  uint32_t max_finite;         // magnitude pattern of the largest finite value
};

uint32_t enc_f16(float x) { return f32_to_f16(x); }
float dec_f16(uint32_t b) { return f16_to_f32(static_cast<uint16_t>(b)); }
uint32_t enc_bf16(float x) { return f32_to_bf16(x); }
float dec_bf16(uint32_t b) { return bf16_to_f32(static_cast<uint16_t>(b)); }
uint32_t enc_e4m3(float x) { return f32_to_f8e4m3(x); }
float dec_e4m3(uint32_t b) { return f8e4m3_to_f32(static_cast<uint8_t>(b)); }

// For every finite x whose magnitude is within the format's finite range, the result r must be a
// nearest representable value (no closer neighbour on either side), ties on the even pattern, with
// x's sign. Magnitude patterns are ordered like the values they encode, so neighbours are ±1.
void check_rounding(const Format& f, float x) {
  const uint32_t r = f.encode(x);
  ASSERT_EQ((r & f.sign_bit) != 0, std::signbit(x)) << f.name << " x=" << x;
  const uint32_t m = r & ~f.sign_bit;
  ASSERT_LE(m, f.max_finite) << f.name << " x=" << x;
  const double a = std::fabs(static_cast<double>(x));
  const double v = std::fabs(static_cast<double>(f.decode(m)));
  const double err = std::fabs(a - v);
  if (m < f.max_finite) {
    const double up = f.decode(m + 1);
    ASSERT_LE(err, up - a) << f.name << " x=" << x;
    if (err == up - a) {
      ASSERT_EQ(m & 1u, 0u) << f.name << " tie x=" << x;
    }
  }
  if (m > 0) {
    const double down = f.decode(m - 1);
    ASSERT_LE(err, a - down) << f.name << " x=" << x;
    if (err == a - down) {
      ASSERT_EQ(m & 1u, 0u) << f.name << " tie x=" << x;
    }
  }
}

TEST(DTypeOracle, RoundsToNearestEvenOverF32Sweep) {
  const Format formats[] = {
      {"f16", enc_f16, dec_f16, 0x8000u, 0x7BFFu},
      {"bf16", enc_bf16, dec_bf16, 0x8000u, 0x7F7Fu},
      {"e4m3", enc_e4m3, dec_e4m3, 0x80u, 0x7Eu},
  };
  // A prime stride visits ~1M patterns spread over every exponent and mantissa residue.
  for (uint64_t bits = 0; bits < (uint64_t{1} << 32); bits += 4093) {
    const float x = from_bits(static_cast<uint32_t>(bits));
    if (!std::isfinite(x)) continue;
    for (const auto& f : formats) {
      const double max = f.decode(f.max_finite);
      if (std::fabs(x) > max) continue;  // overflow rules are tested with known values
      check_rounding(f, x);
      if (HasFatalFailure()) return;
    }
  }
}

// ---- array conversions ------------------------------------------------------------------------

TEST(DTypeArrays, ConvertToF32FromEverySupportedType) {
  float out[4];
  const uint16_t f16[] = {0x3C00, 0xC000, 0x7C00, 0x0001};
  convert_to_f32(DType::kF16, f16, out, 4);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], std::numeric_limits<float>::infinity());
  EXPECT_EQ(out[3], 0x1p-24f);

  const uint16_t bf16[] = {0x3F80, 0xC000, 0x0001, 0x8000};
  convert_to_f32(DType::kBF16, bf16, out, 4);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0x1p-133f);
  EXPECT_TRUE(out[3] == 0.0f && std::signbit(out[3]));

  const uint8_t e4m3[] = {0x38, 0xC0, 0x7E, 0x7F};
  convert_to_f32(DType::kF8E4M3, e4m3, out, 4);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 448.0f);
  EXPECT_TRUE(std::isnan(out[3]));

  // FLT_MAX + 2^103 is the tie between FLT_MAX (odd mantissa) and 2^128: it rounds to inf.
  const double flt_max = std::numeric_limits<float>::max();
  const double f64[] = {0.1, 1e300, -3.5e38, flt_max + 0x1p102, -(flt_max + 0x1p103)};
  float out5[5];
  convert_to_f32(DType::kF64, f64, out5, 5);
  EXPECT_EQ(out5[0], 0.1f);
  EXPECT_EQ(out5[1], std::numeric_limits<float>::infinity());
  EXPECT_EQ(out5[2], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(out5[3], std::numeric_limits<float>::max());
  EXPECT_EQ(out5[4], -std::numeric_limits<float>::infinity());

  const int64_t i64[] = {-5, (int64_t{1} << 24) + 1, int64_t{1} << 40, 0};
  convert_to_f32(DType::kI64, i64, out, 4);
  EXPECT_EQ(out[0], -5.0f);
  EXPECT_EQ(out[1], 16777216.0f);  // nearest float, ties to even
  EXPECT_EQ(out[2], 0x1p40f);
  const int32_t i32[] = {-7, 123456};
  convert_to_f32(DType::kI32, i32, out, 2);
  EXPECT_EQ(out[0], -7.0f);
  EXPECT_EQ(out[1], 123456.0f);
  const uint32_t u32[] = {4000000000u};
  convert_to_f32(DType::kU32, u32, out, 1);
  EXPECT_EQ(out[0], 4e9f);
  const uint8_t u8[] = {0, 255};
  convert_to_f32(DType::kU8, u8, out, 2);
  EXPECT_EQ(out[1], 255.0f);
  const int8_t i8[] = {-128, 127};
  convert_to_f32(DType::kI8, i8, out, 2);
  EXPECT_EQ(out[0], -128.0f);
  const int16_t i16[] = {-32768};
  convert_to_f32(DType::kI16, i16, out, 1);
  EXPECT_EQ(out[0], -32768.0f);
  const uint16_t u16[] = {65535};
  convert_to_f32(DType::kU16, u16, out, 1);
  EXPECT_EQ(out[0], 65535.0f);
  const uint64_t u64[] = {uint64_t{1} << 63};
  convert_to_f32(DType::kU64, u64, out, 1);
  EXPECT_EQ(out[0], 0x1p63f);
  const uint8_t flags[] = {0, 1, 2};
  convert_to_f32(DType::kBool, flags, out, 3);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 1.0f);
  EXPECT_EQ(out[2], 1.0f);
  const float f32[] = {1.5f, -0.0f};
  convert_to_f32(DType::kF32, f32, out, 2);
  EXPECT_EQ(out[0], 1.5f);
  EXPECT_TRUE(std::signbit(out[1]));
}

TEST(DTypeArrays, UnalignedSourceIsFine) {
  // A memory-mapped safetensors region need not be aligned.
  alignas(8) unsigned char buffer[1 + 3 * 2];
  const uint16_t values[] = {0x3F80, 0x4000, 0xBF80};  // bf16 1, 2, -1
  std::memcpy(buffer + 1, values, sizeof values);
  float out[3];
  convert_to_f32(DType::kBF16, buffer + 1, out, 3);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], 2.0f);
  EXPECT_EQ(out[2], -1.0f);
}

TEST(DTypeArrays, ConvertFromF32MatchesScalars) {
  // Large enough to take the parallel path.
  std::vector<float> src(600000);
  for (std::size_t i = 0; i < src.size(); ++i)
    src[i] = from_bits(static_cast<uint32_t>(i * 7919u * 4099u + 12345u));
  std::vector<uint16_t> h(src.size()), b(src.size());
  std::vector<uint8_t> e(src.size());
  convert_from_f32(DType::kF16, src.data(), h.data(), src.size());
  convert_from_f32(DType::kBF16, src.data(), b.data(), src.size());
  convert_from_f32(DType::kF8E4M3, src.data(), e.data(), src.size());
  std::vector<float> back(src.size());
  convert_to_f32(DType::kBF16, b.data(), back.data(), src.size());
  for (std::size_t i = 0; i < src.size(); ++i) {
    ASSERT_EQ(h[i], f32_to_f16(src[i])) << i;
    ASSERT_EQ(b[i], f32_to_bf16(src[i])) << i;
    ASSERT_EQ(e[i], f32_to_f8e4m3(src[i])) << i;
    const float want = bf16_to_f32(b[i]);
    ASSERT_TRUE(std::memcmp(&back[i], &want, 4) == 0) << i;
  }
  std::vector<float> copy(src.size());
  convert_from_f32(DType::kF32, src.data(), copy.data(), src.size());
  EXPECT_EQ(std::memcmp(copy.data(), src.data(), src.size() * 4), 0);
}

TEST(DTypeArrays, UnsupportedDTypesThrowUserErrors) {
  float out[2] = {};
  const unsigned char raw[8] = {};
  for (DType dtype : {DType::kF4, DType::kF8E5M2, DType::kF8E8M0, DType::kC64}) {
    try {
      convert_to_f32(dtype, raw, out, 2);
      ADD_FAILURE() << "no throw for " << dtype_name(dtype);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUser);
      EXPECT_NE(std::string(e.what()).find(std::string(dtype_name(dtype))), std::string::npos);
    }
  }
  unsigned char dst[16];
  EXPECT_THROW(convert_from_f32(DType::kI32, out, dst, 2), Error);
  EXPECT_THROW(convert_from_f32(DType::kF8E5M2, out, dst, 2), Error);
  // Zero elements is a no-op for every supported type, even with null pointers.
  EXPECT_NO_THROW(convert_to_f32(DType::kF16, nullptr, nullptr, 0));
  EXPECT_NO_THROW(convert_from_f32(DType::kBF16, nullptr, nullptr, 0));
}

}  // namespace
}  // namespace refinery
