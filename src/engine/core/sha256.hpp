#pragma once
// SHA-256 (FIPS 180-4), written from the standard. Streaming: feed any number of update() calls,
// then read the digest; reading does not finalize, so more data can follow and a later digest
// covers everything fed so far.
//
// Used to name a tokenizer (hash of tokenizer.json) and teacher weights in HDF5 attributes.

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace refinery {

class Sha256 {
 public:
  static constexpr std::size_t kDigestBytes = 32;
  using Digest = std::array<uint8_t, kDigestBytes>;

  Sha256();

  void update(std::span<const std::byte> data);
  void update(std::span<const uint8_t> data);
  void update(std::string_view text);
  void update(const void* data, std::size_t size);

  // The digest of everything fed so far (this object stays usable).
  Digest digest() const;
  // The same as 64 lowercase hex characters.
  std::string hex_digest() const;

 private:
  void process_block(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  std::size_t buffered_ = 0;    // bytes in buffer_
  uint64_t total_bytes_ = 0;    // message length so far
};

// Hex digest of an in-memory byte string.
std::string sha256_hex(std::string_view data);
// Hex digest of a file's contents, read in 1 MiB chunks; a user error names the file when it
// cannot be opened or read.
std::string sha256_file_hex(const std::filesystem::path& path);

}  // namespace refinery
