#include "engine/model/config_json.hpp"

#include <cmath>

#include "engine/core/error.hpp"

namespace refinery::model {

std::string json_type_words(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::boolean: return str("a boolean (", value.dump(), ")");
    case nlohmann::json::value_t::string: return str("a string (", value.dump(), ")");
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return str("an integer (", value.dump(), ")");
    case nlohmann::json::value_t::number_float: return str("a number (", value.dump(), ")");
    case nlohmann::json::value_t::array: return "an array";
    case nlohmann::json::value_t::object: return "an object";
    default: return "an unsupported JSON value";
  }
}

ConfigJson::ConfigJson(const nlohmann::json& object, std::string source_name, std::string prefix)
    : object_(&object), source_(std::move(source_name)), prefix_(std::move(prefix)) {
  if (!object.is_object())
    throw_user_error(source_, ": expected a JSON object", prefix_.empty() ? "" : str(" at `", prefix_, "`"),
                     ", found ", json_type_words(object), ". A Hugging Face config.json is one JSON object.");
}

std::string ConfigJson::where(const std::string& key) const {
  return str(source_, ": field `", prefix_, key, "`");
}

void ConfigJson::fail(const std::string& key, const std::string& message) const {
  throw_user_error(where(key), ": ", message);
}

void ConfigJson::wrong_type(const std::string& key, const char* expected, const nlohmann::json& found) const {
  throw_user_error(where(key), ": expected ", expected, ", found ", json_type_words(found),
                   ". Fix the value in the config file.");
}

bool ConfigJson::has_key(const std::string& key) const { return object_->contains(key); }

const nlohmann::json* ConfigJson::find(const std::string& key) const {
  auto it = object_->find(key);
  if (it == object_->end() || it->is_null()) return nullptr;
  return &*it;
}

bool ConfigJson::has(const std::string& key) const { return find(key) != nullptr; }

std::optional<int64_t> ConfigJson::get_int(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_number_integer() || v->is_number_unsigned()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
      wrong_type(key, "an integer that fits in 64 bits", *v);
    return v->get<int64_t>();
  }
  // Python writes 4096.0 for floats that hold whole numbers; accept them.
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<int64_t>(d);
  }
  wrong_type(key, "an integer", *v);
}

std::optional<double> ConfigJson::get_number(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(key, "a number", *v);
  return v->get<double>();
}

std::optional<bool> ConfigJson::get_bool(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(key, "a boolean (true or false)", *v);
  return v->get<bool>();
}

std::optional<std::string> ConfigJson::get_string(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) wrong_type(key, "a string", *v);
  return v->get<std::string>();
}

std::optional<std::vector<int64_t>> ConfigJson::get_int_list(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) wrong_type(key, "an array of integers", *v);
  std::vector<int64_t> out;
  for (const auto& item : *v) {
    if (!item.is_number_integer() && !item.is_number_unsigned()) wrong_type(key, "an array of integers", item);
    out.push_back(item.get<int64_t>());
  }
  return out;
}

std::optional<std::vector<std::string>> ConfigJson::get_string_list(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) wrong_type(key, "an array of strings", *v);
  std::vector<std::string> out;
  for (const auto& item : *v) {
    if (!item.is_string()) wrong_type(key, "an array of strings", item);
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::optional<ConfigJson> ConfigJson::get_object(const std::string& key) const {
  const nlohmann::json* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_object()) wrong_type(key, "an object", *v);
  return ConfigJson(*v, source_, prefix_ + key + ".");
}

int64_t ConfigJson::require_int(const std::string& key, const std::string& meaning) const {
  if (!has(key))
    throw_user_error(source_, ": required field `", prefix_, key, "` (", meaning, ") is ",
                     has_key(key) ? "null" : "missing", ". Add it to the config; the model's original "
                     "config.json on the Hugging Face Hub has it.");
  return *get_int(key);
}

double ConfigJson::require_number(const std::string& key, const std::string& meaning) const {
  if (!has(key))
    throw_user_error(source_, ": required field `", prefix_, key, "` (", meaning, ") is ",
                     has_key(key) ? "null" : "missing", ". Add it to the config.");
  return *get_number(key);
}

std::string ConfigJson::require_string(const std::string& key, const std::string& meaning) const {
  if (!has(key))
    throw_user_error(source_, ": required field `", prefix_, key, "` (", meaning, ") is ",
                     has_key(key) ? "null" : "missing", ". Add it to the config.");
  return *get_string(key);
}

}  // namespace refinery::model
