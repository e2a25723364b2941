// SHA-256 against the FIPS 180-2 / NIST example vectors and digests computed by Python's hashlib
// (block-boundary lengths and the file case), plus streaming and file reading.
#include "engine/core/sha256.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "engine/core/error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery {
namespace {

using TempDir = test::ScratchDir;

TEST(Sha256, NistVectors) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),  // 448 bits
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklm"
                       "nopqklmnopqrlmnopqrsmnopqrstnopqrstu"),  // 896 bits
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

TEST(Sha256, OneMillionA) {
  Sha256 hash;
  const std::string thousand(1000, 'a');
  for (int i = 0; i < 1000; ++i) hash.update(thousand);
  EXPECT_EQ(hash.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PaddingBoundaries) {
  // hashlib.sha256(b"x" * n).hexdigest(): n = 55 is the longest message whose padding fits in
  // one block, 56..63 need a second one, 64 fills a block exactly.
  const std::pair<int, const char*> cases[] = {
      {55, "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072"},
      {56, "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e"},
      {63, "75220b47218278e656f2013bb8f0c455a25eaf01e86c64924e9d48d89776d6f2"},
      {64, "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c"},
      {65, "9537c5fdf120482f7d58d25e9ed583f52c02b4e304ea814db1633ad565aed7e9"},
      {119, "000b48d4edf0fa7bee3c6236ecd2785baa5db4eeb8bb54341b029e0d9fa5fb0c"},
      {120, "13f05a0b594787f5ecd315edc96141bd3243203d1b7d4f0836f37308b276ba98"},
      {128, "24da1b81d0b16df6428eee73c69fcb2a93c76bc6df706f0c6670fe6bfe800464"},
  };
  for (const auto& [n, hex] : cases) EXPECT_EQ(sha256_hex(std::string(n, 'x')), hex) << n;
}

TEST(Sha256, StreamingSplitsAgreeAndDigestDoesNotFinalize) {
  std::string message;
  for (int i = 0; i < 300; ++i) message += static_cast<char>(i * 37 + 11);
  const std::string whole = sha256_hex(message);
  for (std::size_t split = 0; split <= message.size(); ++split) {
    Sha256 hash;
    hash.update(std::string_view(message).substr(0, split));
    hash.update(std::string_view(message).substr(split));
    ASSERT_EQ(hash.hex_digest(), whole) << split;
  }
  // Reading the digest midway leaves the state usable; the three update overloads agree.
  Sha256 hash;
  hash.update(std::string_view("ab"));
  EXPECT_EQ(hash.hex_digest(), sha256_hex("ab"));
  const uint8_t c = 'c';
  hash.update(std::span<const uint8_t>(&c, 1));
  EXPECT_EQ(hash.hex_digest(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  Sha256 bytes;
  const std::byte abc[] = {std::byte{'a'}, std::byte{'b'}, std::byte{'c'}};
  bytes.update(std::span<const std::byte>(abc));
  EXPECT_EQ(bytes.digest(), hash.digest());
  EXPECT_EQ(bytes.digest()[0], 0xba);
}

TEST(Sha256, FileInChunks) {
  TempDir dir;
  const auto file = dir.path() / "data.bin";
  // 3 MiB + 17 bytes: several 1 MiB reads and a short tail.
  std::vector<char> data(3 * (1 << 20) + 17);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 31 + 7) & 255);
  {
    std::ofstream out(file, std::ios::binary);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  // hashlib.sha256(bytes(((i*31+7)&255) for i in range(3*2**20+17))).hexdigest()
  EXPECT_EQ(sha256_file_hex(file), "27f3f0120d4a72b66e7b58152c631644bd689231ebd4487469b59226f1be13af");

  const auto empty = dir.path() / "empty.bin";
  { std::ofstream out(empty, std::ios::binary); }
  EXPECT_EQ(sha256_file_hex(empty),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, MissingFileAndDirectoryAreUserErrors) {
  TempDir dir;
  const auto missing = dir.path() / "no_such_tokenizer.json";
  try {
    sha256_file_hex(missing);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_NE(std::string(e.what()).find("no_such_tokenizer.json"), std::string::npos) << e.what();
  }
  EXPECT_THROW(sha256_file_hex(dir.path()), Error);
}

}  // namespace
}  // namespace refinery
