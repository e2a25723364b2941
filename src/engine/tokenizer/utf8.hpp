#pragma once
// UTF-8 helpers for the tokenizer: lossy validation, code point decoding/encoding, and the Unicode
// White_Space property (what Rust's char::is_whitespace tests, which Hugging Face `tokenizers` uses).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace refinery::tokenizer::utf8 {

// Replaces every invalid sequence of `text` with U+FFFD and returns the result; `replaced` (if
// given) receives the number of replacements. The rule is the Unicode "maximal subpart" practice
// (Unicode §3.9, U+FFFD substitution), which is what both Rust's String::from_utf8_lossy and
// Python's bytes.decode("utf-8", "replace") do: a truncated but otherwise valid prefix of a
// multi-byte sequence becomes one U+FFFD; a byte that can never start or continue a sequence here
// (0x80-0xBF alone, 0xC0, 0xC1, 0xF5-0xFF, a surrogate's second byte after 0xED, an overlong
// second byte after 0xE0/0xF0, > U+10FFFF after 0xF4) becomes one U+FFFD per byte.
std::string to_valid_lossy(std::string_view text, std::size_t* replaced = nullptr);

// True when `text` is valid UTF-8 (same rules as above).
bool is_valid(std::string_view text);

// Length in bytes of the UTF-8 sequence starting with lead byte `lead` (1 for invalid leads).
// Only meaningful on valid UTF-8.
inline std::size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  if ((lead >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes the code point at `text[pos]` (valid UTF-8 expected) and advances `pos`.
char32_t decode_at(std::string_view text, std::size_t& pos);

// Appends the UTF-8 encoding of `cp` to `out`.
void append(std::string& out, char32_t cp);

// Unicode White_Space (Rust char::is_whitespace).
bool is_whitespace(char32_t cp);

}  // namespace refinery::tokenizer::utf8
