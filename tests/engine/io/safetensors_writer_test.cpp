// The writer: byte-exact agreement with the Python safetensors library, round trips, atomicity.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "engine/core/error.hpp"
#include "engine/io/atomic_file.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/io/safetensors_writer.hpp"
#include "safetensors_test_util.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::io {
namespace {

namespace fs = std::filesystem;
using refinery::test::error_message_of;
using test::TempDir;

std::span<const std::byte> as_bytes_of(const std::vector<float>& v) { return std::as_bytes(std::span(v)); }

TEST(SafetensorsWriter, MatchesThePythonLibraryByteForByte) {
  // writer_expected.json lists the tensors in the order the Python library laid them out.
  const auto ref = test::read_json(test::io_fixture("data/writer_expected.json"));
  std::vector<std::vector<std::byte>> data;
  for (const auto& t : ref["tensors"]) data.push_back(test::from_hex(t["hex"].get<std::string>()));
  std::vector<TensorToWrite> tensors;
  for (std::size_t i = 0; i < ref["tensors"].size(); ++i) {
    const auto& t = ref["tensors"][i];
    tensors.push_back({t["name"].get<std::string>(), *dtype_from_name(t["dtype"].get<std::string>()),
                       t["shape"].get<std::vector<int64_t>>(), data[i], nullptr});
  }
  TempDir dir;
  write_safetensors(dir.path() / "ours.safetensors", tensors);
  EXPECT_EQ(test::read_bytes(dir.path() / "ours.safetensors"),
            test::read_bytes(test::io_fixture("data/writer_expected.safetensors")));
}

TEST(SafetensorsWriter, RoundTripsSpansAndFillCallbacks) {
  TempDir dir;
  const std::vector<float> a = {1.f, -2.f, 3.5f, 0.f, 1e-30f, 6.f};
  const std::vector<uint16_t> h = {0x3c00, 0xbc00, 0x7bff};
  const std::vector<float> nine = {9.f};
  std::vector<TensorToWrite> tensors = {
      {"layer.a", DType::kF32, {2, 3}, as_bytes_of(a), nullptr},
      {"layer.filled", DType::kI32, {5}, {}, [](std::span<std::byte> dst) {
         for (int32_t i = 0; i < 5; ++i) std::memcpy(dst.data() + 4 * i, &i, 4);
       }},
      {"h", DType::kF16, {3}, std::as_bytes(std::span(h)), nullptr},
      {"packed", DType::kF4, {2, 3}, {}, [](std::span<std::byte> dst) {
         ASSERT_EQ(dst.size(), 3u);
         std::memset(dst.data(), 0x5a, 3);
       }},
      {"scalar", DType::kF32, {}, as_bytes_of(nine), nullptr},
      {"empty", DType::kBF16, {0, 7}, {}, nullptr},
  };
  const fs::path path = dir.path() / "x.safetensors";
  write_safetensors(path, tensors, {{"step", "12"}, {"format", "pt"}});

  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file.data_start() % 8, 0u) << "the header is padded to a multiple of 8";
  EXPECT_EQ(file.metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"step", "12"}}));
  ASSERT_EQ(file.tensors().size(), tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) EXPECT_EQ(file.tensors()[i].name, tensors[i].name) << "layout order";
  const auto got_a = file.bytes(*file.find("layer.a"));
  EXPECT_EQ(std::memcmp(got_a.data(), a.data(), 24), 0);
  const auto filled = file.bytes(*file.find("layer.filled"));
  for (int32_t i = 0; i < 5; ++i) {
    int32_t v;
    std::memcpy(&v, filled.data() + 4 * i, 4);
    EXPECT_EQ(v, i);
  }
  EXPECT_EQ(file.find("packed")->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(file.bytes(*file.find("packed"))[2], std::byte{0x5a});
  EXPECT_TRUE(file.find("scalar")->shape.empty());
  EXPECT_EQ(file.bytes(*file.find("empty")).size(), 0u);
  // No temporary file is left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
}

TEST(SafetensorsWriter, RejectsBadEntriesAndLeavesNoFile) {
  TempDir dir;
  const fs::path path = dir.path() / "bad.safetensors";
  const std::vector<float> four(4);
  EXPECT_NE(error_message_of([&] { write_safetensors(path, {{"w", DType::kF32, {2, 3}, as_bytes_of(four), nullptr}}); })
                .find("need 24 bytes, but the data has 16"),
            std::string::npos);
  EXPECT_NE(error_message_of([&] {
              write_safetensors(path, {{"w", DType::kF32, {4}, as_bytes_of(four), nullptr},
                                       {"w", DType::kF32, {4}, as_bytes_of(four), nullptr}});
            }).find("tensor 'w' is given twice"),
            std::string::npos);
  EXPECT_NE(error_message_of([&] { write_safetensors(path, {{"w", DType::kF32, {-1}, {}, nullptr}}); }).find("negative dimension"),
            std::string::npos);
  EXPECT_NE(error_message_of([&] { write_safetensors(path, {{"w", DType::kF4, {3}, {}, nullptr}}); })
                .find("do not fill a whole number of bytes"),
            std::string::npos);
  EXPECT_NE(error_message_of([&] { write_safetensors(dir.path() / "no/such/dir/x.safetensors", {}); }).find("does not exist"),
            std::string::npos);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(SafetensorsWriter, ExceptionInFillKeepsTheOldFile) {
  TempDir dir;
  const fs::path path = dir.path() / "model.safetensors";
  const std::vector<float> v = {1.f, 2.f};
  write_safetensors(path, {{"old", DType::kF32, {2}, as_bytes_of(v), nullptr}});
  const auto before = test::read_bytes(path);
  EXPECT_THROW(write_safetensors(path, {{"new", DType::kF32, {2}, {},
                                          [](std::span<std::byte>) { throw std::runtime_error("disk gone"); }}}),
               std::runtime_error);
  EXPECT_EQ(test::read_bytes(path), before);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1) << "temp file removed";
}

TEST(AtomicFile, CommitReplacesAndAbandonRemovesTheTemporary) {
  TempDir dir;
  const fs::path path = dir.path() / "state.json";
  write_file_atomically(path, "first");
  {
    AtomicFile file(path);
    file.write(std::string_view("second, never committed"));
    EXPECT_TRUE(fs::exists(file.temp_path()));
    EXPECT_EQ(file.temp_path().parent_path(), dir.path()) << "same directory, so rename is atomic";
  }
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "first");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);
  {
    AtomicFile file(path);
    file.write(std::string_view("third"));
    file.commit();
    EXPECT_TRUE(file.committed());
    EXPECT_FALSE(fs::exists(file.temp_path()));
  }
  std::ifstream again(path);
  std::string text2((std::istreambuf_iterator<char>(again)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text2, "third");
}

}  // namespace
}  // namespace refinery::io
