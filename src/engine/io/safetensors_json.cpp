#include "engine/io/safetensors_json.hpp"

#include <set>

#include "engine/core/error.hpp"

namespace refinery::io {

std::optional<std::size_t> find_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    uint32_t cp = 0;
    uint32_t min_cp = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min_cp = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min_cp = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min_cp = 0x10000;
    } else {
      return i;  // a continuation byte where a sequence should start, or 0xF8..0xFF
    }
    if (n - i < len) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::nullopt;
}

std::string json_brief(const nlohmann::json& value, std::size_t max_chars) {
  std::string text = value.dump();
  if (text.size() <= max_chars) return text;
  // Cut at a UTF-8 character boundary so the message stays valid UTF-8.
  std::size_t cut = max_chars;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return text.substr(0, cut) + "...";
}

std::string json_type_name(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::object: return "an object";
    case nlohmann::json::value_t::array: return "a list";
    case nlohmann::json::value_t::string: return "a string";
    case nlohmann::json::value_t::boolean: return "a boolean";
    case nlohmann::json::value_t::null: return "null";
    default: return "a number";
  }
}

nlohmann::json parse_json_object(const std::string& file, std::string_view what, std::string_view text) {
  if (const auto bad = find_invalid_utf8(text))
    throw_user_error(file, ": ", what, " is not valid UTF-8 (byte 0x", std::hex,
                     static_cast<int>(static_cast<unsigned char>(text[*bad])), std::dec, " at ", what,
                     " offset ", *bad, "); the file is corrupt, re-download or re-export it");
  constexpr int kMaxDepth = 16;  // safetensors headers and indexes need 3; deeper input is garbage
  std::set<std::string> root_keys;
  const auto check = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using Event = nlohmann::json::parse_event_t;
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxDepth)
      throw_user_error(file, ": ", what, " JSON nests deeper than ", kMaxDepth,
                       " levels; the file is corrupt, re-download or re-export it");
    if (event == Event::key && depth == 1 && !root_keys.insert(parsed.get<std::string>()).second)
      throw_user_error(file, ": ", what, " has the key ", json_brief(parsed),
                       " twice; the file is corrupt, re-download or re-export it");
    return true;
  };
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text.begin(), text.end(), check);
  } catch (const nlohmann::json::exception& e) {
    throw_user_error(file, ": ", what, " is not valid JSON (", e.what(),
                     "); the file is corrupt or of another format, re-download or re-export it");
  }
  if (!root.is_object())
    throw_user_error(file, ": ", what, " must be a JSON object, found ", json_type_name(root),
                     "; the file is corrupt or of another format, re-download or re-export it");
  return root;
}

std::map<std::string, std::string> parse_string_map(const std::string& file, std::string_view field,
                                                    const nlohmann::json& value) {
  if (!value.is_object())
    throw_user_error(file, ": ", field, " must be an object mapping strings to strings, found ",
                     json_type_name(value), "; re-export the file");
  std::map<std::string, std::string> result;
  for (const auto& [key, entry] : value.items()) {
    if (!entry.is_string())
      throw_user_error(file, ": ", field, " must map strings to strings, but \"", key, "\" maps to ",
                       json_type_name(entry), " (", json_brief(entry), "); re-export the file");
    result.emplace(key, entry.get<std::string>());
  }
  return result;
}

}  // namespace refinery::io
