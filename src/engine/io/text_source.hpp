#pragma once
// The text inputs of DESIGN §5, streamed one document at a time from a list of files. The kind of
// each file comes from its extension:
//
//   .txt          the whole file is one document (read whole: it is one stream of text)
//   .jsonl        one JSON object {"text": "..."} per line; blank lines are skipped; other keys are
//                 ignored
//   .json         tokens JSON: [[id, ...], ...], one list of non-negative integer ids per document
//                 (pre-tokenized, for exact tests); the file is parsed whole when it is reached
//   .h5 / .hdf5   a refinery token dataset (token_dataset.hpp), one document per doc_offsets entry
//
// Document::origin names where a document came from, for messages: "a.txt" for a text file,
// "a.jsonl:12" (1-based line) for JSON lines, "t.json[3]" / "d.h5[3]" (0-based document index) for
// pre-tokenized inputs.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace refinery::io {

enum class TextSourceKind { kText, kJsonLines, kTokensJson, kTokenDataset };

struct Document {
  std::string text;              // empty when pre_tokenized
  std::vector<uint32_t> tokens;  // empty unless pre_tokenized
  bool pre_tokenized = false;
  std::string origin;  // "file", "file:line" or "file[index]"
};

// The kind of an input path from its extension (case-insensitive); user error listing the
// supported extensions for any other.
TextSourceKind text_source_kind(const std::string& path);

class TextSource {
 public:
  // Checks every path up front (kind known, file exists and is a regular file) so that a typo in
  // the last file fails before hours of work on the first. User error for an empty list.
  explicit TextSource(std::vector<std::string> paths);
  ~TextSource();
  TextSource(TextSource&&) noexcept;
  TextSource& operator=(TextSource&&) noexcept;

  // The next document of the current file, moving on to the next file at its end; std::nullopt
  // when every file is done. User errors name the file and line (or document index).
  std::optional<Document> next();

  const std::vector<std::string>& paths() const { return paths_; }
  uint64_t documents_read() const { return documents_read_; }

  class Reader;  // one open input file (defined in text_source.cpp)

 private:
  std::vector<std::string> paths_;
  size_t next_path_ = 0;
  std::unique_ptr<Reader> reader_;
  uint64_t documents_read_ = 0;
};

}  // namespace refinery::io
