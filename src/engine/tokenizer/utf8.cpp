#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer::utf8 {
namespace {

// Length of the valid sequence at `text[pos]`, or 0 when invalid; on 0, `bad` receives the length
// of the maximal subpart to replace by one U+FFFD (always >= 1).
std::size_t valid_length(std::string_view text, std::size_t pos, std::size_t& bad) {
  const auto byte = [&](std::size_t i) -> unsigned {
    return static_cast<unsigned char>(text[pos + i]);
  };
  const std::size_t left = text.size() - pos;
  const unsigned b0 = byte(0);
  bad = 1;
  if (b0 < 0x80) return 1;
  std::size_t need = 0;
  unsigned lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;  // 0x80-0xC1, 0xF5-0xFF: never a lead byte
  }
  for (std::size_t i = 1; i < need; ++i) {
    if (i >= left) {
      bad = i;  // truncated at the end: the valid prefix is one maximal subpart
      return 0;
    }
    const unsigned b = byte(i);
    const unsigned min = i == 1 ? lo : 0x80, max = i == 1 ? hi : 0xBF;
    if (b < min || b > max) {
      bad = i;
      return 0;
    }
  }
  return need;
}

}  // namespace

std::string to_valid_lossy(std::string_view text, std::size_t* replaced) {
  std::string out;
  out.reserve(text.size());
  std::size_t count = 0, pos = 0, bad = 0;
  while (pos < text.size()) {
    const std::size_t n = valid_length(text, pos, bad);
    if (n > 0) {
      out.append(text.data() + pos, n);
      pos += n;
    } else {
      out.append("\xEF\xBF\xBD");
      pos += bad;
      ++count;
    }
  }
  if (replaced) *replaced = count;
  return out;
}

bool is_valid(std::string_view text) {
  std::size_t pos = 0, bad = 0;
  while (pos < text.size()) {
    // ASCII fast path: most text is ASCII.
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const std::size_t n = valid_length(text, pos, bad);
    if (n == 0) return false;
    pos += n;
  }
  return true;
}

char32_t decode_at(std::string_view text, std::size_t& pos) {
  const auto b0 = static_cast<unsigned char>(text[pos]);
  const std::size_t n = sequence_length(b0);
  if (n == 1 || pos + n > text.size()) {
    ++pos;
    return b0;
  }
  char32_t cp = n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (std::size_t i = 1; i < n; ++i) cp = (cp << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  pos += n;
  return cp;
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_whitespace(char32_t cp) {
  // Unicode 15 White_Space: the list Rust's char::is_whitespace implements.
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

}  // namespace refinery::tokenizer::utf8
