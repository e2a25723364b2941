#include "engine/tokenizer/normalizer.hpp"

#include "engine/tokenizer/byte_level.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer {

std::string replace_all(const std::string& text, const std::string& from, const std::string& to) {
  if (from.empty()) return text;
  std::string out;
  out.reserve(text.size());
  std::size_t pos = 0;
  while (true) {
    const std::size_t hit = text.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(text, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  out.append(text, pos, std::string::npos);
  return out;
}

std::string replace_all(const std::string& text, const Regex& regex, const std::string& to) {
  std::vector<std::pair<std::size_t, std::size_t>> matches;
  regex.find_all(text, matches);
  if (matches.empty()) return text;
  std::string out;
  std::size_t pos = 0;
  for (const auto& [start, end] : matches) {
    out.append(text, pos, start - pos);
    out += to;
    pos = end;
  }
  out.append(text, pos, std::string::npos);
  return out;
}

namespace {
// Replace's pattern: {"String": "..."} or {"Regex": "..."}.
struct PatternSpec {
  bool is_regex;
  std::string text;
};
PatternSpec parse_pattern(const nlohmann::json& node, const char* key, const JsonWhere& where) {
  const auto& pattern = require_member(node, key, where);
  const JsonWhere at = where.at(key);
  if (const auto* s = find_member(pattern, "String"); s && s->is_string()) return {false, s->get<std::string>()};
  if (const auto* r = find_member(pattern, "Regex"); r && r->is_string()) return {true, r->get<std::string>()};
  throw_user_error(at.str(), ": expected {\"String\": \"...\"} or {\"Regex\": \"...\"}, found ",
                   pattern.dump(), ".");
}
}  // namespace

Normalizer Normalizer::from_json(const nlohmann::json& spec, const JsonWhere& where) {
  Normalizer normalizer;
  if (!spec.is_null()) normalizer.add_from_json(spec, where);
  return normalizer;
}

void Normalizer::add_from_json(const nlohmann::json& spec, const JsonWhere& where) {
  const std::string type = require_string(spec, "type", where);
  if (type == "Sequence") {
    const auto& list = require_member(spec, "normalizers", where);
    if (!list.is_array()) throw_user_error(where.at("normalizers").str(), ": expected a list.");
    for (std::size_t i = 0; i < list.size(); ++i) add_from_json(list[i], where.at("normalizers").at(i));
  } else if (type == "Prepend") {
    steps_.push_back({Kind::kPrepend, require_string(spec, "prepend", where), {}, nullptr});
  } else if (type == "Replace") {
    const PatternSpec pattern = parse_pattern(spec, "pattern", where);
    Step step{Kind::kReplaceString, pattern.text, require_string(spec, "content", where), nullptr};
    if (pattern.is_regex) {
      step.kind = Kind::kReplaceRegex;
      step.regex = std::make_shared<const Regex>(pattern.text, false, where.at("pattern").str());
    }
    steps_.push_back(std::move(step));
  } else if (type == "Strip") {
    Step step{Kind::kStrip, {}, {}, nullptr};
    step.strip_left = optional_bool(spec, "strip_left", true, where);
    step.strip_right = optional_bool(spec, "strip_right", true, where);
    steps_.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    steps_.push_back({Kind::kByteLevel, {}, {}, nullptr});
  } else if (const auto form = unicode::parse_normalization_form(type)) {
    Step step{Kind::kUnicodeForm, {}, {}, nullptr};
    step.form = *form;
    steps_.push_back(std::move(step));
  } else {
    throw_user_error(where.at("type").str(), ": the normalizer type \"", type,
                     "\" is not supported. Supported: Sequence, Prepend, Replace, Strip, ByteLevel, "
                     "NFC, NFD, NFKC, NFKD (Lowercase, BertNormalizer, StripAccents and Precompiled are not).");
  }
}

void Normalizer::normalize(std::string& text) const {
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Kind::kPrepend:
        // `tokenizers` prepends only to a non-empty string.
        if (!text.empty()) text = step.pattern + text;
        break;
      case Kind::kReplaceString:
        if (text.find(step.pattern) != std::string::npos) text = replace_all(text, step.pattern, step.content);
        break;
      case Kind::kReplaceRegex: text = replace_all(text, *step.regex, step.content); break;
      case Kind::kStrip: {
        std::size_t begin = 0, end = text.size();
        if (step.strip_left) {
          while (begin < end) {
            std::size_t next = begin;
            if (!utf8::is_whitespace(utf8::decode_at(text, next))) break;
            begin = next;
          }
        }
        if (step.strip_right) {
          while (end > begin) {
            std::size_t start = end - 1;
            while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
            std::size_t probe = start;
            if (!utf8::is_whitespace(utf8::decode_at(text, probe))) break;
            end = start;
          }
        }
        text = text.substr(begin, end - begin);
        break;
      }
      case Kind::kByteLevel: {
        std::string mapped;
        byte_level::encode_bytes(text, mapped);
        text = std::move(mapped);
        break;
      }
      case Kind::kUnicodeForm: text = unicode::normalize(text, step.form); break;
    }
  }
}

}  // namespace refinery::tokenizer
