// Every malformed input in tests/engine/io/malformed/ (made by
// tests/fixtures/make_safetensors_fixtures.py, which also checks that the Python safetensors library
// rejects each single file) must give a user error containing the exact text of
// malformed/expected_errors.json, and the message must name the input.
#include <gtest/gtest.h>

#include "engine/core/error.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_file.hpp"
#include "safetensors_test_util.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::io {
namespace {

using refinery::test::error_message_of;
using test::io_fixture;

TEST(SafetensorsMalformed, EveryInputGivesItsExpectedError) {
  const auto dir = io_fixture("malformed");
  const auto expected = test::read_json(dir / "expected_errors.json");
  ASSERT_GE(expected.size(), 10u);
  for (const auto& [name, message] : expected.items()) {
    SCOPED_TRACE(name);
    const auto path = dir / name;
    ASSERT_TRUE(std::filesystem::exists(path));
    const std::string text = message.get<std::string>();
    if (std::filesystem::is_directory(path)) {
      const std::string error = error_message_of([&] { Checkpoint::open(path); });
      EXPECT_NE(error.find(text), std::string::npos) << "got: " << error;
      EXPECT_NE(error.find(path.string()), std::string::npos) << "the message must name the input: " << error;
    } else {
      const std::string from_file = error_message_of([&] { SafetensorsFile::open(path); });
      EXPECT_NE(from_file.find(text), std::string::npos) << "got: " << from_file;
      EXPECT_EQ(from_file.rfind(path.string() + ": ", 0), 0u) << "the message must start with the file: " << from_file;
      // The in-memory parser (used by the fuzz target) gives the same message.
      const auto bytes = test::read_bytes(path);
      EXPECT_EQ(error_message_of([&] { SafetensorsFile::parse(bytes, path.string()); }), from_file);
      // And so does opening it as a checkpoint.
      EXPECT_EQ(error_message_of([&] { Checkpoint::open(path); }), from_file);
    }
  }
}

TEST(SafetensorsMalformed, EveryFileInTheFolderHasAnExpectedError) {
  const auto dir = io_fixture("malformed");
  const auto expected = test::read_json(dir / "expected_errors.json");
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name == "expected_errors.json") continue;
    EXPECT_TRUE(expected.contains(name)) << name << " has no entry in expected_errors.json";
  }
}

TEST(SafetensorsMalformed, MissingFileAndDirectoryErrors) {
  const auto missing = io_fixture("malformed/does_not_exist.safetensors");
  EXPECT_NE(error_message_of([&] { SafetensorsFile::open(missing); }).find("no such file"), std::string::npos);
  EXPECT_NE(error_message_of([&] { Checkpoint::open(missing); }).find("no such file or directory"), std::string::npos);
  EXPECT_NE(error_message_of([&] { SafetensorsFile::open(io_fixture("malformed")); }).find("not a regular file"),
            std::string::npos);
}

}  // namespace
}  // namespace refinery::io
