#include "engine/tokenizer/regex.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>

#include "engine/core/error.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() {
    if (code) pcre2_code_free(code);
  }
};

namespace {

// Oniguruma's (and Unicode's White_Space) \s, written out: PCRE2's \s also matches U+180E.
constexpr const char* kSpaceItems = R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";
// Oniguruma's Unicode \w: letters, marks, decimal numbers, connector punctuation (PCRE2's UCP \w
// lacks the marks and includes other numbers).
constexpr const char* kWordItems = R"(\p{L}\p{M}\p{Nd}\p{Pc})";

// Rewrites \s, \S, \w, \W so that PCRE2 matches what Oniguruma matches. Inside a character class
// only \s and \w are expanded (a negated set cannot be spliced into a class).
std::string to_oniguruma_semantics(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  bool in_class = false;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      ++i;
      if (e == 's') out += in_class ? std::string(kSpaceItems) : str("[", kSpaceItems, "]");
      else if (e == 'w') out += in_class ? std::string(kWordItems) : str("[", kWordItems, "]");
      else if (e == 'S' && !in_class) out += str("[^", kSpaceItems, "]");
      else if (e == 'W' && !in_class) out += str("[^", kWordItems, "]");
      else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      // POSIX class [:alpha:] inside a class: copy through its closing ":]".
      const std::size_t end = pattern.find(":]", i + 2);
      if (end != std::string::npos) {
        out.append(pattern, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

// A pattern matching `text` literally (PCRE2_LITERAL cannot be combined with PCRE2_UCP).
std::string escape_literal(const std::string& text) {
  std::string out;
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out += '\\';
    out += c;
  }
  return out;
}

// Match data owned for one find_all call (RAII).
struct MatchData {
  pcre2_match_data* data;
  explicit MatchData(const pcre2_code* code) : data(pcre2_match_data_create_from_pattern(code, nullptr)) {
    if (!data) throw_internal_error("PCRE2: out of memory creating match data");
  }
  ~MatchData() { pcre2_match_data_free(data); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
};
}  // namespace

Regex::Regex(const std::string& pattern, bool literal, const std::string& where)
    : pattern_(pattern), impl_(std::make_unique<Impl>()) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  const uint32_t options = PCRE2_UTF | PCRE2_UCP;
  const std::string compiled = literal ? escape_literal(pattern) : to_oniguruma_semantics(pattern);
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled.data()), compiled.size(), options,
                              &error_code, &error_offset, nullptr);
  if (!impl_->code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    throw_user_error(where, ": the regex \"", pattern, "\" does not compile (PCRE2 with UTF and UCP): ",
                     reinterpret_cast<const char*>(message), " at offset ", error_offset,
                     ". Fix the pattern in the file.");
  }
  // JIT is an optimisation only: fall back to the interpreter when unavailable.
  impl_->jit = pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

void Regex::find_all(std::string_view text,
                     std::vector<std::pair<std::size_t, std::size_t>>& out) const {
  out.clear();
  if (text.empty()) return;
  MatchData match(impl_->code);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::size_t offset = 0;
  while (offset <= text.size()) {
    // Input is valid UTF-8 (the tokenizer repairs it first), so skip PCRE2's UTF check.
    const int rc = impl_->jit ? pcre2_jit_match(impl_->code, subject, text.size(), offset,
                                                PCRE2_NO_UTF_CHECK, match.data, nullptr)
                              : pcre2_match(impl_->code, subject, text.size(), offset,
                                            PCRE2_NO_UTF_CHECK, match.data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      throw_internal_error("PCRE2 match failed for pattern \"", pattern_, "\": ",
                           reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match.data);
    const std::size_t start = ov[0], end = ov[1];
    out.emplace_back(start, end);
    if (end > start) {
      offset = end;
    } else {
      // Empty match: move on by one whole character.
      if (end >= text.size()) break;
      offset = end + utf8::sequence_length(static_cast<unsigned char>(text[end]));
    }
  }
}

}  // namespace refinery::tokenizer
