#pragma once
// Normalizers of tokenizer.json ("normalizer"): a sequence of text rewrites applied to each piece of
// the input that is not an added token, before pre-tokenization. Supported types: Sequence,
// Prepend, Replace (String or Regex pattern), Strip, ByteLevel, and the Unicode normalization forms
// NFC, NFD, NFKC, NFKD (unicode_normalization.hpp; Qwen2 and later use NFC). Lowercase,
// BertNormalizer, StripAccents and Precompiled are not supported: loading a tokenizer.json that
// uses them is a user error naming the JSON path.

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/tokenizer/json_where.hpp"
#include "engine/tokenizer/regex.hpp"
#include "engine/tokenizer/unicode_normalization.hpp"

namespace refinery::tokenizer {

class Normalizer {
 public:
  Normalizer() = default;
  // `spec` is the "normalizer" value (null means none).
  static Normalizer from_json(const nlohmann::json& spec, const JsonWhere& where);

  // Rewrites `text` in place (valid UTF-8 in, valid UTF-8 out).
  void normalize(std::string& text) const;
  bool empty() const { return steps_.empty(); }

 private:
  enum class Kind { kPrepend, kReplaceString, kReplaceRegex, kStrip, kByteLevel, kUnicodeForm };
  struct Step {
    Kind kind;
    std::string pattern;   // Prepend: the prefix; Replace: the literal pattern
    std::string content;   // Replace: the replacement
    std::shared_ptr<const Regex> regex;  // Replace with a Regex pattern
    bool strip_left = false, strip_right = false;
    unicode::NormalizationForm form = unicode::NormalizationForm::kNFC;  // kUnicodeForm
  };
  void add_from_json(const nlohmann::json& spec, const JsonWhere& where);

  std::vector<Step> steps_;
};

// Replaces every non-overlapping occurrence of `from` (non-empty) in `text` by `to`.
std::string replace_all(const std::string& text, const std::string& from, const std::string& to);

// Replaces every match of `regex` in `text` by `to`.
std::string replace_all(const std::string& text, const Regex& regex, const std::string& to);

}  // namespace refinery::tokenizer
