// Reading files written by the Python `safetensors` library (fixtures by
// tests/fixtures/make_safetensors_fixtures.py), and the format rules on small hand-made inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"
#include "engine/io/safetensors_file.hpp"
#include "safetensors_test_util.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::io {
namespace {

using test::from_hex;
using test::io_fixture;
using test::read_bytes;
using test::read_json;

// Test-local decoders (the core conversions are another module's and are tested there), written
// from the format definitions: f16 = 1.5.10 with bias 15; bf16 = the top half of an f32;
// f8 e4m3fn = 1.4.3 with bias 7, no infinities.
double decode_minifloat(uint32_t bits, int exponent_bits, int mantissa_bits) {
  const uint32_t sign = bits >> (exponent_bits + mantissa_bits);
  const uint32_t exponent = (bits >> mantissa_bits) & ((1u << exponent_bits) - 1);
  const uint32_t mantissa = bits & ((1u << mantissa_bits) - 1);
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const double m = static_cast<double>(mantissa) / static_cast<double>(1u << mantissa_bits);
  const double magnitude = exponent == 0 ? std::ldexp(m, 1 - bias) : std::ldexp(1.0 + m, static_cast<int>(exponent) - bias);
  return sign ? -magnitude : magnitude;
}

// Element i of a tensor's bytes as double, for every dtype the fixture uses.
double element(DType dtype, std::span<const std::byte> bytes, std::size_t i) {
  const std::byte* p = bytes.data();
  switch (dtype) {
    case DType::kF64: { double v; std::memcpy(&v, p + 8 * i, 8); return v; }
    case DType::kI64: { int64_t v; std::memcpy(&v, p + 8 * i, 8); return static_cast<double>(v); }
    case DType::kI32: { int32_t v; std::memcpy(&v, p + 4 * i, 4); return v; }
    case DType::kI8: return static_cast<int8_t>(p[i]);
    case DType::kU8: case DType::kBool: return static_cast<uint8_t>(p[i]);
    case DType::kF32: { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
    case DType::kBF16: {
      uint16_t h; std::memcpy(&h, p + 2 * i, 2);
      const uint32_t bits = static_cast<uint32_t>(h) << 16;
      float v; std::memcpy(&v, &bits, 4); return v;
    }
    case DType::kF16: { uint16_t h; std::memcpy(&h, p + 2 * i, 2); return decode_minifloat(h, 5, 10); }
    case DType::kF8E4M3: return decode_minifloat(static_cast<uint8_t>(p[i]), 4, 3);
    default: ADD_FAILURE() << "no decoder for " << dtype_name(dtype); return 0;
  }
}

void expect_matches_reference(const SafetensorsFile& file, const nlohmann::json& ref) {
  EXPECT_EQ(file.file_size(), ref["file_size"].get<uint64_t>());
  EXPECT_EQ(file.data_start(), 8 + ref["header_length"].get<uint64_t>());
  using StringMap = std::map<std::string, std::string>;
  EXPECT_EQ(file.metadata(), ref["metadata"].get<StringMap>());
  ASSERT_EQ(file.tensors().size(), ref["tensors"].size());
  for (std::size_t k = 0; k < file.tensors().size(); ++k) {
    const TensorEntry& t = file.tensors()[k];
    const nlohmann::json& r = ref["tensors"][k];  // both in file order
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.name, r["name"].get<std::string>());
    EXPECT_EQ(dtype_name(t.dtype), r["dtype"].get<std::string>());
    EXPECT_EQ(t.shape, r["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.data_begin, r["data_offsets"][0].get<uint64_t>());
    EXPECT_EQ(t.data_end, r["data_offsets"][1].get<uint64_t>());
    const auto bytes = file.bytes(t);
    const auto expected = from_hex(r["hex"].get<std::string>());
    ASSERT_EQ(bytes.size(), expected.size());
    EXPECT_TRUE(std::equal(bytes.begin(), bytes.end(), expected.begin()));
    const auto values = r["values"].get<std::vector<double>>();
    ASSERT_EQ(t.num_elements(), values.size());
    for (std::size_t i = 0; i < values.size(); ++i) EXPECT_EQ(element(t.dtype, bytes, i), values[i]) << "element " << i;
    EXPECT_EQ(file.find(t.name), &t);
  }
}

TEST(SafetensorsReader, ReadsFileWrittenByPythonLibraryExactly) {
  const auto ref = read_json(io_fixture("data/python_reference.json"));
  const auto file = SafetensorsFile::open(io_fixture("data/python_reference.safetensors"));
  expect_matches_reference(file, ref);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.find("not.there"), nullptr);
  // The fixture covers a scalar and an empty tensor.
  ASSERT_NE(file.find("scalar"), nullptr);
  EXPECT_TRUE(file.find("scalar")->shape.empty());
  EXPECT_EQ(file.bytes(*file.find("empty")).size(), 0u);
}

TEST(SafetensorsReader, ParsesInMemoryBufferLikeFile) {
  const auto ref = read_json(io_fixture("data/python_reference.json"));
  const auto bytes = read_bytes(io_fixture("data/python_reference.safetensors"));
  const auto file = SafetensorsFile::parse(bytes, "in-memory");
  expect_matches_reference(file, ref);
  EXPECT_EQ(file.display_name(), "in-memory");
  // No copy: the spans point into the caller's buffer.
  const auto span = file.bytes(file.tensors().front());
  EXPECT_GE(span.data(), bytes.data());
  EXPECT_LE(span.data() + span.size(), bytes.data() + bytes.size());
  EXPECT_EQ(file.keep_alive(), nullptr);
}

TEST(SafetensorsReader, KeepAliveOutlivesTheFileObject) {
  std::shared_ptr<const void> owner;
  std::span<const std::byte> view;
  {
    const auto file = SafetensorsFile::open(io_fixture("data/python_reference.safetensors"));
    owner = file.keep_alive();
    view = file.bytes(*file.find("f32"));
  }
  ASSERT_NE(owner, nullptr);
  float first = 0;
  std::memcpy(&first, view.data(), 4);
  EXPECT_EQ(first, -0.5f);  // f32 = arange(6) * 0.25 - 0.5
}

std::vector<std::byte> make_file(const std::string& header, std::size_t data_bytes) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0});
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

// The user error parsing `bytes` gives.
std::string error_of(const std::vector<std::byte>& bytes) {
  return refinery::test::error_message_of(
      [&] { SafetensorsFile::parse(bytes, "mem.safetensors"); });
}

TEST(SafetensorsReader, AcceptsEmptyHeaderAndTrailingSpaces) {
  const auto file = SafetensorsFile::parse(make_file("{}      ", 0), "empty");
  EXPECT_TRUE(file.tensors().empty());
  EXPECT_TRUE(file.metadata().empty());
}

TEST(SafetensorsReader, AcceptsEveryDtypeOfTheFormatWithBitExactSizes) {
  for (int i = 0; i <= static_cast<int>(DType::kC64); ++i) {
    const auto dtype = static_cast<DType>(i);
    const std::size_t bytes = 8 * dtype_bits(dtype) / 8;  // shape [8]: whole bytes for every dtype
    const std::string header = str(R"({"t":{"dtype":")", dtype_name(dtype), R"(","shape":[2,4],"data_offsets":[0,)",
                                   bytes, "]}}");
    const auto file = SafetensorsFile::parse(make_file(header, bytes), "all-dtypes");
    ASSERT_EQ(file.tensors().size(), 1u) << dtype_name(dtype);
    EXPECT_EQ(file.tensors()[0].dtype, dtype);
    EXPECT_EQ(file.bytes(file.tensors()[0]).size(), bytes) << dtype_name(dtype);
  }
  // Sub-byte types count bits: 2 F4 elements in 1 byte, 4 F6 elements in 3 bytes.
  EXPECT_NO_THROW(SafetensorsFile::parse(make_file(R"({"t":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", 1), "f4"));
  EXPECT_NO_THROW(
      SafetensorsFile::parse(make_file(R"({"t":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", 3), "f6"));
  EXPECT_NE(error_of(make_file(R"({"t":{"dtype":"F6_E3M2","shape":[2],"data_offsets":[0,2]}})", 2))
                .find("2 elements of F6_E3M2 (6 bits each) do not fill a whole number of bytes"),
            std::string::npos);
}

TEST(SafetensorsReader, TensorsComeInFileOrderWhateverTheHeaderOrder) {
  const auto file = SafetensorsFile::parse(
      make_file(R"({"z":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]},)"
                R"("e":{"dtype":"U8","shape":[0],"data_offsets":[3,3]}})",
                3),
      "order");
  ASSERT_EQ(file.tensors().size(), 3u);
  EXPECT_EQ(file.tensors()[0].name, "z");
  EXPECT_EQ(file.tensors()[1].name, "a");
  EXPECT_EQ(file.tensors()[2].name, "e");
}

TEST(SafetensorsReader, ZeroSizedTensorsMayShareAnOffset) {
  EXPECT_NO_THROW(SafetensorsFile::parse(
      make_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[3,0],"data_offsets":[0,0]}})", 0),
      "zeros"));
}

TEST(SafetensorsReader, ErrorsNameTheInputAndTheNumbers) {
  EXPECT_EQ(error_of(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4)),
            "mem.safetensors: the file is truncated: expected at least 70 bytes (header 62 + data 8), found 66; "
            "re-download or re-export it");
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4)).find("mem.safetensors: "),
            std::string::npos);
  // A huge zero-free shape whose product wraps to a small number must not pass.
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,0]}})", 0))
                .find("overflow"),
            std::string::npos);
  // Deep nesting is rejected cleanly.
  EXPECT_NE(error_of(make_file(std::string(5000, '[') + std::string(5000, ']'), 0)).find("nests deeper"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,1]}})", 1)).find("dtype must be a string"),
            std::string::npos);
  EXPECT_NE(error_of(make_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", 1))
                .find("data_offsets must be [begin, end]"),
            std::string::npos);
}

}  // namespace
}  // namespace refinery::io
