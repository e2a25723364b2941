#pragma once
// JSON helpers shared by the safetensors header parser and the sharded-checkpoint index parser:
// strict parsing of untrusted JSON text with errors that name the file.

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace refinery::io {

// Byte offset of the first invalid UTF-8 sequence in `text` (overlong forms, surrogates and code
// points above U+10FFFF are invalid), or std::nullopt when `text` is valid UTF-8.
std::optional<std::size_t> find_invalid_utf8(std::string_view text);

// Parses `text` (the JSON of `what` in `file`, e.g. "header") into a JSON object. Rejects invalid
// UTF-8, invalid JSON, a non-object root, a key repeated in the root object and nesting deeper than
// 16 levels, each with a user error naming the file.
nlohmann::json parse_json_object(const std::string& file, std::string_view what, std::string_view text);

// The safetensors header: parse_json_object with what = "header".
inline nlohmann::json parse_header_json(const std::string& file, std::string_view text) {
  return parse_json_object(file, "header", text);
}

// Reads a JSON object whose values are all strings (e.g. `__metadata__`); `field` names it in errors.
std::map<std::string, std::string> parse_string_map(const std::string& file, std::string_view field,
                                                    const nlohmann::json& value);

// value.dump(), cut to about `max_chars` characters ("..." marks a cut), for error messages.
std::string json_brief(const nlohmann::json& value, std::size_t max_chars = 80);

// "an object", "a string", "a number", ... for messages.
std::string json_type_name(const nlohmann::json& value);

}  // namespace refinery::io
