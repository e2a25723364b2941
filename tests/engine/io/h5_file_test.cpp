#include "engine/io/h5_file.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::io {
namespace {

using refinery::test::error_message_of;
using test::ScratchDir;

namespace fs = std::filesystem;

const std::string kData = std::string(REFINERY_SOURCE_DIR) + "/tests/engine/io/h5data/";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

TEST(H5Handle, ClosesOnDestructionAndMoves) {
  hid_t id = H5Screate(H5S_SCALAR);
  ASSERT_GE(id, 0);
  {
    H5Handle a(id, H5Sclose);
    EXPECT_GT(H5Iis_valid(id), 0);
    H5Handle b(std::move(a));
    EXPECT_FALSE(a.valid());
    EXPECT_EQ(b.get(), id);
    H5Handle c;
    c = std::move(b);
    EXPECT_GT(H5Iis_valid(id), 0);
  }
  EXPECT_EQ(H5Iis_valid(id), 0);
}

TEST(H5File, MissingAndNonHdf5FilesAreUserErrorsWithoutHdf5Noise) {
  ScratchDir dir;
  testing::internal::CaptureStderr();
  std::string missing = error_message_of([&] { H5File::open(dir.file("nope.h5")); });
  std::string not_h5 = error_message_of([&] { H5File::open(kData + "bad_not_hdf5.h5"); });
  std::string truncated = error_message_of([&] { H5File::open(kData + "bad_truncated.h5"); });
  std::string no_dir = error_message_of([&] { H5File::create(dir.file("no/such/dir/x.h5")); });
  std::string stderr_text = testing::internal::GetCapturedStderr();
  EXPECT_NE(missing.find("nope.h5"), std::string::npos) << missing;
  EXPECT_NE(missing.find("does not exist"), std::string::npos) << missing;
  EXPECT_NE(not_h5.find("bad_not_hdf5.h5"), std::string::npos) << not_h5;
  EXPECT_NE(not_h5.find("not an HDF5 file"), std::string::npos) << not_h5;
  EXPECT_NE(truncated.find("bad_truncated.h5"), std::string::npos) << truncated;
  EXPECT_NE(truncated.find("HDF5 says"), std::string::npos) << truncated;  // the collected stack
  EXPECT_NE(no_dir.find("does not exist"), std::string::npos) << no_dir;
  // HDF5's automatic error printer is off: nothing reached stderr.
  EXPECT_EQ(stderr_text, "");
}

// Appends `values` in uneven pieces so that writes cross chunk boundaries; reads back ranges.
template <typename T>
void round_trip(DType dtype, std::vector<uint64_t> row_shape, const std::vector<T>& values) {
  ScratchDir dir;
  const std::string path = dir.file("rt.h5");
  uint64_t row = 1;
  for (uint64_t d : row_shape) row *= d;
  const uint64_t rows = values.size() / row;
  {
    H5File file = H5File::create(path);
    H5DatasetLayout layout;
    layout.row_shape = row_shape;
    layout.chunk_rows = 3;
    layout.deflate_level = 1;
    H5Dataset ds = file.create_dataset("/data", dtype, layout);
    EXPECT_EQ(ds.rows(), 0u);
    uint64_t done = 0, piece = 1;
    while (done < rows) {
      uint64_t n = std::min(piece++, rows - done);
      ds.append(std::span<const T>(values.data() + done * row, n * row));
      done += n;
    }
    file.close();
  }
  H5File file = H5File::open(path);
  H5Dataset ds = file.open_dataset("/data");
  EXPECT_EQ(ds.dtype(), dtype);
  std::vector<uint64_t> shape{rows};
  shape.insert(shape.end(), row_shape.begin(), row_shape.end());
  EXPECT_EQ(ds.shape(), shape);
  EXPECT_EQ(ds.chunk_rows(), 3u);
  EXPECT_TRUE(ds.is_extendable());
  EXPECT_EQ(ds.is_compressed(), h5_deflate_available());
  EXPECT_EQ(ds.read_all<T>(), values);
  std::vector<T> middle(values.begin() + 2 * row, values.begin() + 7 * row);
  EXPECT_EQ(ds.read_rows<T>(2, 5), middle);
  EXPECT_TRUE(ds.read_rows<T>(rows, 0).empty());
}

TEST(H5Dataset, RoundTripsEveryIntegerAndFloatType1D) {
  round_trip<uint32_t>(DType::kU32, {}, {0, 1, 2, 4294967295u, 7, 8, 9, 10, 11, 12});
  round_trip<int32_t>(DType::kI32, {}, {-2147483647 - 1, -1, 0, 1, 2147483647, 5, 6, 7, 8});
  round_trip<int64_t>(DType::kI64, {},
                      {std::numeric_limits<int64_t>::min(), -1, 0, 1,
                       std::numeric_limits<int64_t>::max(), 5, 6, 7});
  round_trip<uint64_t>(DType::kU64, {}, {0, 1, ~uint64_t{0}, 3, 4, 5, 6, 7, 8});
  round_trip<float>(
      DType::kF32, {},
      {0.f, -0.f, 1.5f, -3.25e-30f, 3e38f, std::numeric_limits<float>::infinity(), 6, 7, 8});
}

TEST(H5Dataset, RoundTripsRowsOf2D) {
  std::vector<int32_t> idx(11 * 5);
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int32_t>(i * 7919 % 1000) - 500;
  round_trip<int32_t>(DType::kI32, {5}, idx);
  std::vector<float> f(9 * 4);
  for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(i) * 0.25f - 3.f;
  round_trip<float>(DType::kF32, {4}, f);
}

TEST(H5Dataset, Float16BitsRoundTripAndWidenToFloat32) {
  ScratchDir dir;
  const std::string path = dir.file("f16.h5");
  // 0, 1, -2, +inf, smallest subnormal (2^-24), largest finite (65504)
  const std::vector<uint16_t> bits = {0x0000, 0x3C00, 0xC000, 0x7C00, 0x0001, 0x7BFF};
  {
    H5File file = H5File::create(path);
    H5DatasetLayout layout;
    layout.row_shape = {3};
    layout.chunk_rows = 1;
    H5Dataset ds = file.create_dataset("/logprobs", DType::kF16, layout);
    ds.append(bits.data(), DType::kF16, 2);
    file.close();
  }
  H5File file = H5File::open(path);
  H5Dataset ds = file.open_dataset("/logprobs");
  EXPECT_EQ(ds.dtype(), DType::kF16);
  EXPECT_EQ(ds.type_description(), "float16");
  std::vector<uint16_t> back(6);
  ds.read_rows(0, 2, DType::kF16, back.data());
  EXPECT_EQ(back, bits);
  std::vector<float> wide = ds.read_all<float>();
  EXPECT_EQ(wide[0], 0.f);
  EXPECT_EQ(wide[1], 1.f);
  EXPECT_EQ(wide[2], -2.f);
  EXPECT_EQ(wide[3], std::numeric_limits<float>::infinity());
  EXPECT_EQ(wide[4], std::ldexp(1.f, -24));
  EXPECT_EQ(wide[5], 65504.f);
}

TEST(H5Dataset, ReadsLogitCacheTypesWrittenByH5py) {
  nlohmann::json expected = read_json(kData + "f16_h5py.expected.json");
  H5File file = H5File::open(kData + "f16_h5py.h5");
  H5Dataset lp = file.open_dataset("/logprobs");
  ASSERT_EQ(lp.dtype(), DType::kF16);
  ASSERT_EQ(lp.shape(), (std::vector<uint64_t>{3, 4}));
  std::vector<uint16_t> bits(12);
  lp.read_rows(0, 3, DType::kF16, bits.data());
  std::vector<float> values = lp.read_all<float>();
  for (size_t r = 0; r < 3; ++r) {
    for (size_t c = 0; c < 4; ++c) {
      EXPECT_EQ(bits[r * 4 + c], expected["bits"][r][c].get<uint16_t>()) << r << "," << c;
      const auto& v = expected["values"][r][c];
      float want = v.is_string() ? (v == "inf" ? INFINITY : -INFINITY) : v.get<float>();
      EXPECT_EQ(values[r * 4 + c], want) << r << "," << c;
    }
  }
  H5Dataset idx = file.open_dataset("/indices");
  EXPECT_EQ(idx.dtype(), DType::kI32);
  std::vector<int32_t> want_idx;
  for (const auto& row : expected["indices"])
    for (const auto& v : row) want_idx.push_back(v.get<int32_t>());
  EXPECT_EQ(idx.read_all<int32_t>(), want_idx);
  EXPECT_EQ(file.open_dataset("/token_ids").read_all<int32_t>(),
            expected["token_ids"].get<std::vector<int32_t>>());
  EXPECT_EQ(file.open_dataset("/seq_offsets").read_all<int64_t>(),
            expected["seq_offsets"].get<std::vector<int64_t>>());
  EXPECT_EQ(file.int_attribute("k"), 4);
  EXPECT_EQ(file.int_attribute("k_u8"), 200);
  EXPECT_EQ(file.string_attribute("teacher"), "teacher/dir");
  EXPECT_EQ(file.string_attribute("teacher_fixed"), "fixed-len");
}

TEST(H5Dataset, OnlyLosslessConversions) {
  ScratchDir dir;
  H5File file = H5File::create(dir.file("conv.h5"));
  H5Dataset i32 = file.create_dataset("/i32", DType::kI32, {});
  const std::vector<int32_t> v = {-5, 0, 7};
  i32.append(std::span<const int32_t>(v));
  EXPECT_EQ(i32.read_all<int64_t>(), (std::vector<int64_t>{-5, 0, 7}));  // widening: fine
  std::string narrow = error_message_of([&] { i32.read_all<int16_t>(); });
  EXPECT_NE(narrow.find("/i32"), std::string::npos) << narrow;
  EXPECT_NE(narrow.find("stores int32, expected int16"), std::string::npos) << narrow;
  error_message_of([&] { i32.read_all<uint32_t>(); });  // signed -> unsigned loses negatives
  H5Dataset f16 = file.create_dataset("/f16", DType::kF16, {});
  const std::vector<float> f = {1.f};
  error_message_of([&] { f16.append(std::span<const float>(f)); }, ErrorKind::kInternal);
  EXPECT_TRUE(h5_lossless_conversion(DType::kU32, DType::kI64));
  EXPECT_FALSE(h5_lossless_conversion(DType::kU32, DType::kI32));
  EXPECT_FALSE(h5_lossless_conversion(DType::kF32, DType::kF16));
}

TEST(H5Dataset, OutOfRangeReadNamesFileDatasetAndRows) {
  ScratchDir dir;
  H5File file = H5File::create(dir.file("range.h5"));
  H5Dataset ds = file.create_dataset("/x", DType::kU64, {});
  const std::vector<uint64_t> v = {1, 2, 3};
  ds.append(std::span<const uint64_t>(v));
  std::string msg = error_message_of([&] { ds.read_rows<uint64_t>(2, 2); });
  EXPECT_NE(msg.find("rows [2, 4)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("range.h5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has 3 rows"), std::string::npos) << msg;
}

// The logit cache's resume: cut each dataset back to its last complete chunk, then go on appending.
TEST(H5Dataset, ShrinkToLastCompleteChunkThenAppend) {
  ScratchDir dir;
  const std::string path = dir.file("cache.h5");
  {
    H5File file = H5File::create(path);
    H5DatasetLayout layout;
    layout.row_shape = {2};
    layout.chunk_rows = 4;
    H5Dataset ds = file.create_dataset("/indices", DType::kI32, layout);
    std::vector<int32_t> rows(10 * 2);
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int32_t>(i);
    ds.append(std::span<const int32_t>(rows));
    file.set_string_attribute("teacher", "t");
  }
  H5File file = H5File::open(path, /*writable=*/true);
  H5Dataset ds = file.open_dataset("/indices");
  ASSERT_EQ(ds.rows(), 10u);
  const uint64_t complete = ds.rows() / ds.chunk_rows() * ds.chunk_rows();
  ds.resize(complete);
  EXPECT_EQ(ds.rows(), 8u);
  const std::vector<int32_t> more = {100, 101, 102, 103};
  ds.append(std::span<const int32_t>(more));
  std::vector<int32_t> all = ds.read_all<int32_t>();
  ASSERT_EQ(all.size(), 20u);
  EXPECT_EQ(all[15], 15);
  EXPECT_EQ(all[16], 100);
  EXPECT_EQ(all[19], 103);
  // write_rows overwrites in place and grows past the end.
  const std::vector<int32_t> patch = {-1, -2, -3, -4};
  ds.write_rows(9, patch.data(), DType::kI32, 2);
  EXPECT_EQ(ds.rows(), 11u);
  EXPECT_EQ(ds.read_rows<int32_t>(9, 2), patch);
}

TEST(H5File, NestedPathsAndExistence) {
  ScratchDir dir;
  H5File file = H5File::create(dir.file("nested.h5"));
  file.create_dataset("/a/b/c", DType::kU8, {});
  EXPECT_TRUE(file.exists("/a"));
  EXPECT_TRUE(file.exists("/a/b"));
  EXPECT_TRUE(file.is_dataset("/a/b/c"));
  EXPECT_FALSE(file.is_dataset("/a/b"));
  EXPECT_FALSE(file.exists("/x/y/z"));  // missing intermediate group: false, not an error
  EXPECT_FALSE(file.is_dataset("/x"));
  std::string msg = error_message_of([&] { file.open_dataset("/a/b"); });
  EXPECT_NE(msg.find("no dataset /a/b"), std::string::npos) << msg;
  error_message_of([&] { file.create_dataset("/a/b/c", DType::kU8, {}); }, ErrorKind::kInternal);
}

TEST(H5Object, AttributesRoundTripAndReportMisuse) {
  ScratchDir dir;
  const std::string path = dir.file("attrs.h5");
  {
    H5File file = H5File::create(path);
    file.set_string_attribute("name", "first");
    file.set_string_attribute("name", "héllo ✓");  // replaced; UTF-8 kept
    file.set_int_attribute("count", -42);
    file.set_int_attribute("big", std::numeric_limits<int64_t>::max());
    H5Dataset ds = file.create_dataset("/d", DType::kF32, {});
    ds.set_string_attribute("unit", "nats");
    ds.set_int_attribute("k", 64);
  }
  H5File file = H5File::open(path);
  EXPECT_EQ(file.string_attribute("name"), "héllo ✓");
  EXPECT_EQ(file.int_attribute("count"), -42);
  EXPECT_EQ(file.int_attribute("big"), std::numeric_limits<int64_t>::max());
  EXPECT_TRUE(file.has_attribute("count"));
  EXPECT_FALSE(file.has_attribute("absent"));
  H5Dataset ds = file.open_dataset("/d");
  EXPECT_EQ(ds.string_attribute("unit"), "nats");
  EXPECT_EQ(ds.int_attribute("k"), 64);
  std::string missing = error_message_of([&] { file.string_attribute("absent"); });
  EXPECT_NE(missing.find("attribute 'absent'"), std::string::npos) << missing;
  EXPECT_NE(missing.find("attrs.h5"), std::string::npos) << missing;
  std::string wrong = error_message_of([&] { file.int_attribute("name"); });
  EXPECT_NE(wrong.find("should be one integer"), std::string::npos) << wrong;
  EXPECT_NE(wrong.find("string"), std::string::npos) << wrong;
}

TEST(H5Dataset, UnsupportedTypeIsAUserError) {
  ScratchDir dir;
  const std::string path = dir.file("odd.h5");
  {
    // A dataset of fixed-length strings, written through the C API.
    H5File file = H5File::create(path);
    H5Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(type.get(), 8);
    hsize_t dims[1] = {2};
    H5Handle space(H5Screate_simple(1, dims, nullptr), H5Sclose);
    H5Handle ds(
        H5Dcreate2(file.id(), "/s", type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
        H5Dclose);
    ASSERT_TRUE(ds.valid());
  }
  H5File file = H5File::open(path);
  H5Dataset ds = file.open_dataset("/s");
  std::string msg = error_message_of([&] { ds.dtype(); });
  EXPECT_NE(msg.find("/s"), std::string::npos) << msg;
  EXPECT_NE(msg.find("string"), std::string::npos) << msg;
}

}  // namespace
}  // namespace refinery::io
