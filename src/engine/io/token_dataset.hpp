#pragma once
// The token dataset of DESIGN §5 (`refine data tokenize` writes it; calibration, distillation and
// evaluation read it). One HDF5 file:
//
//   /tokens       uint32 [n_tokens]    every document's ids, concatenated; chunked (+ deflate)
//   /doc_offsets  uint64 [n_docs + 1]  document i is tokens[doc_offsets[i] : doc_offsets[i + 1]];
//                                      starts at 0, never decreases, ends at n_tokens
//   attributes on "/":
//     format = "refinery.tokens", format_version = 1, tokenizer_sha256, tokenizer_path,
//     vocab_size (every id is below it), sources (JSON array of the input file names, as a string),
//     n_docs, n_tokens, created_by = "refinery <version>"
//
// Strings are variable-length UTF-8 and integers int64, so h5py reads them as str and int.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/io/h5_file.hpp"

namespace refinery::io {

inline constexpr const char* kTokenDatasetFormat = "refinery.tokens";
inline constexpr int64_t kTokenDatasetFormatVersion = 1;

// What a token dataset says about how it was made.
struct TokenDatasetInfo {
  std::string tokenizer_sha256;  // hex SHA-256 of tokenizer.json
  std::string tokenizer_path;
  uint32_t vocab_size = 0;           // ids must be < vocab_size; must be > 0
  std::vector<std::string> sources;  // input file names, in order
};

// Streams documents into a new token dataset with bounded memory (one chunk of tokens and one of
// offsets are buffered). Everything goes to `OUT.tmp-<pid>` first; finish() renames it to OUT, so
// a crash never leaves a half-written file under the final name. Destroying the writer without
// finish() removes the temporary file.
class TokenDatasetWriter {
 public:
  struct Options {
    uint64_t chunk_tokens = uint64_t{1} << 18;  // tokens per HDF5 chunk (1 MiB)
    int deflate_level = 4;                      // 0 = no compression; used when deflate exists
  };

  TokenDatasetWriter(std::string out_path, TokenDatasetInfo info);
  TokenDatasetWriter(std::string out_path, TokenDatasetInfo info, Options options);
  ~TokenDatasetWriter();
  TokenDatasetWriter(const TokenDatasetWriter&) = delete;
  TokenDatasetWriter& operator=(const TokenDatasetWriter&) = delete;

  // Appends one document (may be empty). `origin` ("file:line") names it in errors. User error
  // when an id is >= vocab_size.
  void add_document(std::span<const uint32_t> ids, std::string_view origin = {});
  // Writes the remaining buffers and the n_docs/n_tokens attributes, closes the file and renames it
  // to the final path. Nothing may be added afterwards.
  void finish();

  uint64_t n_docs() const { return n_docs_; }
  uint64_t n_tokens() const { return n_tokens_; }
  const std::string& out_path() const { return out_path_; }
  const std::string& temp_path() const { return temp_path_; }

 private:
  void flush_tokens();
  void flush_offsets();
  void discard() noexcept;

  std::string out_path_;
  std::string temp_path_;
  TokenDatasetInfo info_;
  Options options_;
  H5File file_;
  H5Dataset tokens_;
  H5Dataset offsets_;
  std::vector<uint32_t> pending_tokens_;   // [<= chunk_tokens]
  std::vector<uint64_t> pending_offsets_;  // [<= offsets chunk]
  uint64_t n_docs_ = 0;
  uint64_t n_tokens_ = 0;
  bool finished_ = false;
};

// A validated, read-only token dataset.
class TokenDataset {
 public:
  struct Options {
    // Scan every token at open and check it is < vocab_size (streamed in chunks; O(n_tokens)).
    bool check_token_ids = true;
  };

  // Opens and validates; user errors name the file and say what is wrong: a missing dataset or
  // attribute, a wrong dtype or rank, offsets that do not start at 0, decrease or do not end at
  // n_tokens, an id >= vocab_size, n_docs/n_tokens attributes that disagree with the data.
  explicit TokenDataset(const std::string& path);
  TokenDataset(const std::string& path, Options options);

  const std::string& path() const { return path_; }
  uint64_t n_docs() const { return offsets_.size() - 1; }
  uint64_t n_tokens() const { return offsets_.back(); }
  uint32_t vocab_size() const { return vocab_size_; }
  int64_t format_version() const { return format_version_; }
  const std::string& tokenizer_sha256() const { return tokenizer_sha256_; }
  const std::string& tokenizer_path() const { return tokenizer_path_; }
  const std::vector<std::string>& sources() const { return sources_; }
  const std::string& created_by() const { return created_by_; }
  // doc_offsets: [n_docs + 1]
  const std::vector<uint64_t>& doc_offsets() const { return offsets_; }

  // Token range [begin, end) of document i; user error when i >= n_docs.
  std::pair<uint64_t, uint64_t> document_range(uint64_t i) const;
  std::vector<uint32_t> document(uint64_t i) const;
  // Tokens [begin, begin + count); user error when out of range.
  std::vector<uint32_t> read_tokens(uint64_t begin, uint64_t count) const;
  void read_tokens(uint64_t begin, std::span<uint32_t> out) const;

  // Any attribute of the file's root group.
  bool has_attribute(const std::string& name) const { return file_.has_attribute(name); }
  std::string string_attribute(const std::string& name) const;
  int64_t int_attribute(const std::string& name) const;

 private:
  void validate_offsets(const H5Dataset& offsets);
  void check_token_ids() const;

  std::string path_;
  H5File file_;
  H5Dataset tokens_;
  std::vector<uint64_t> offsets_;  // [n_docs + 1]
  uint32_t vocab_size_ = 0;
  int64_t format_version_ = 0;
  std::string tokenizer_sha256_;
  std::string tokenizer_path_;
  std::vector<std::string> sources_;
  std::string created_by_;
};

}  // namespace refinery::io
