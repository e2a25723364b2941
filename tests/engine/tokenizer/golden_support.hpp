#pragma once
// Shared by the tokenizer parity tests: reading the golden files written by the scripts in
// tests/fixtures/tokenizer/, applying a tokenizer.json patch, and comparing one text's
// encode/decode results with its golden case.

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.hpp"

namespace refinery::tokenizer::test {

inline const std::string kRoot = REFINERY_SOURCE_DIR;

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return nlohmann::json::parse(buffer.str());
}

// "[1,2,3]": ids in failure messages.
inline std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (std::size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

// Applies a change to a tokenizer.json: "set" replaces top-level keys, "model" replaces keys of
// "model", "append_added" appends entries to "added_tokens"; each part is optional.
inline void apply_tokenizer_patch(nlohmann::json& j, const nlohmann::json& change) {
  if (change.contains("set"))
    for (auto it = change["set"].begin(); it != change["set"].end(); ++it) j[it.key()] = it.value();
  if (change.contains("model"))
    for (auto it = change["model"].begin(); it != change["model"].end(); ++it)
      j["model"][it.key()] = it.value();
  if (change.contains("append_added"))
    for (const auto& t : change["append_added"]) j["added_tokens"].push_back(t);
}

// Encodes `text` without and with special tokens, decodes the first as is and the second
// skipping special tokens, and compares with the golden case `c` ("ids", "ids_special",
// "decoded", "decoded_skip"). Returns "" when all four match, else the lines of a failure message.
inline std::string golden_case_mismatch(const Tokenizer& tok, const std::string& text,
                                        const nlohmann::json& c) {
  const auto expected = c["ids"].get<std::vector<int32_t>>();
  const auto expected_special = c["ids_special"].get<std::vector<int32_t>>();
  const auto ids = tok.encode(text);
  const auto ids_special = tok.encode(text, true);
  const std::string decoded = tok.decode(ids);
  const std::string decoded_skip = tok.decode(ids_special, true);
  if (ids == expected && ids_special == expected_special &&
      decoded == c["decoded"].get<std::string>() &&
      decoded_skip == c["decoded_skip"].get<std::string>())
    return "";
  std::ostringstream m;
  m << "\n  ids      " << show(ids) << "\n  expected " << show(expected) << "\n  special  "
    << show(ids_special) << " expected " << show(expected_special) << "\n  decoded  "
    << nlohmann::json(decoded).dump() << " expected " << c["decoded"].dump() << "\n  skip     "
    << nlohmann::json(decoded_skip).dump() << " expected " << c["decoded_skip"].dump();
  return m.str();
}

}  // namespace refinery::tokenizer::test
