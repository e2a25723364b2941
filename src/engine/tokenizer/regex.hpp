#pragma once
// A compiled PCRE2 pattern (8-bit, PCRE2_UTF | PCRE2_UCP, JIT-compiled when the library supports
// it) used by the Split pre-tokenizer and the Replace normalizer/decoder. Hugging Face `tokenizers`
// uses Oniguruma; for the patterns in real tokenizer.json files (\p{L}, \p{N}, \s, (?!\S), classes,
// (?i:...)) PCRE2 with UCP gives the same matches once \s, \S, \w, \W are rewritten to
// Oniguruma's Unicode definitions (PCRE2's \s also matches U+180E; its \w lacks combining marks).
// \S and \W inside a character class are left to PCRE2. Unicode property tables follow the PCRE2
// build (10.42: Unicode 14), Oniguruma's may be newer: characters assigned after Unicode 14 can
// differ.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace refinery::tokenizer {

class Regex {
 public:
  // Compiles `pattern` (a regex, or a literal string when `literal`). Throws a user error naming
  // `where` (file and JSON path) when it does not compile.
  Regex(const std::string& pattern, bool literal, const std::string& where);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // All non-overlapping matches [start, end) in `text` (valid UTF-8), left to right. An empty match
  // is reported and the search resumes one character later (as Oniguruma's find_iter does).
  void find_all(std::string_view text, std::vector<std::pair<std::size_t, std::size_t>>& out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Impl;
  std::string pattern_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace refinery::tokenizer
