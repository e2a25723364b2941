#pragma once
// Typed, checked access to the fields of one JSON object from a config file.
//
// Every failure is a user error that names the file, the field (with its path, e.g.
// `rope_scaling.factor`), what was expected and what was found. A JSON `null` counts as absent for
// the optional getters: transformers treats `"field": null` like a missing field and applies its
// default, and so do we.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace refinery::model {

class ConfigJson {
 public:
  // `object` must outlive this reader. `prefix` is prepended to field names in messages ("rope_scaling.").
  ConfigJson(const nlohmann::json& object, std::string source_name, std::string prefix = "");

  const std::string& source() const { return source_; }
  bool has(const std::string& key) const;           // present and not null
  bool has_key(const std::string& key) const;       // present, null or not
  const nlohmann::json* find(const std::string& key) const;  // nullptr when absent or null

  // Required fields: `meaning` says what the field is, for the "missing" message.
  int64_t require_int(const std::string& key, const std::string& meaning) const;
  double require_number(const std::string& key, const std::string& meaning) const;
  std::string require_string(const std::string& key, const std::string& meaning) const;

  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_number(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::string> get_string(const std::string& key) const;
  std::optional<std::vector<int64_t>> get_int_list(const std::string& key) const;
  std::optional<std::vector<std::string>> get_string_list(const std::string& key) const;
  // A nested object; nullopt when absent or null; error when present with another type.
  std::optional<ConfigJson> get_object(const std::string& key) const;

  int64_t int_or(const std::string& key, int64_t fallback) const { return get_int(key).value_or(fallback); }
  double number_or(const std::string& key, double fallback) const {
    return get_number(key).value_or(fallback);
  }
  bool bool_or(const std::string& key, bool fallback) const { return get_bool(key).value_or(fallback); }

  // "file: field `prefix.key`" for messages built by callers.
  std::string where(const std::string& key) const;
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  [[noreturn]] void wrong_type(const std::string& key, const char* expected, const nlohmann::json& found) const;

  const nlohmann::json* object_;
  std::string source_;
  std::string prefix_;
};

// The JSON type of `value` in words ("a string", "null", "an array", ...).
std::string json_type_words(const nlohmann::json& value);

}  // namespace refinery::model
