#pragma once
// Where a value sits in a tokenizer file, for error messages: "tokenizer.json at /model/merges/3".
// Every parse error names the file and the JSON path (DESIGN §1.5).

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/core/error.hpp"

namespace refinery::tokenizer {

struct JsonWhere {
  std::string file;
  std::string path;  // JSON pointer, "" for the root

  JsonWhere at(const std::string& key) const { return {file, path + "/" + key}; }
  JsonWhere at(std::size_t index) const { return {file, path + "/" + std::to_string(index)}; }
  std::string str() const { return file + " at " + (path.empty() ? std::string("/") : path); }
};

// `obj[key]` when `obj` is an object that has it, else nullptr.
inline const nlohmann::json* find_member(const nlohmann::json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

inline const nlohmann::json& require_member(const nlohmann::json& obj, const char* key,
                                            const JsonWhere& where) {
  if (!obj.is_object())
    throw_user_error(where.str(), ": expected a JSON object, found ", obj.type_name(), ".");
  const auto* value = find_member(obj, key);
  if (!value)
    throw_user_error(where.str(), ": the required field \"", key,
                     "\" is missing. Re-save the tokenizer with Hugging Face `tokenizers`.");
  return *value;
}

inline std::string require_string(const nlohmann::json& obj, const char* key, const JsonWhere& where) {
  const auto& value = require_member(obj, key, where);
  if (!value.is_string())
    throw_user_error(where.at(key).str(), ": expected a string, found ", value.type_name(), ".");
  return value.get<std::string>();
}

inline bool optional_bool(const nlohmann::json& obj, const char* key, bool fallback,
                          const JsonWhere& where) {
  const auto* value = find_member(obj, key);
  if (!value || value->is_null()) return fallback;
  if (!value->is_boolean())
    throw_user_error(where.at(key).str(), ": expected true or false, found ", value->type_name(), ".");
  return value->get<bool>();
}

}  // namespace refinery::tokenizer
