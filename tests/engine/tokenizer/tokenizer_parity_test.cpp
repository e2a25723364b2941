// Parity with Hugging Face `tokenizers` on the two real tokenizers in data/tokenizers/ (golden ids
// written by tests/fixtures/tokenizer/make_golden.py): encode with and without special tokens,
// decode, invalid UTF-8 input, and variants of the files that exercise other components.

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.hpp"
#include "engine/tokenizer/utf8.hpp"
#include "golden_support.hpp"

namespace refinery::tokenizer {
namespace {

using test::apply_tokenizer_patch;
using test::golden_case_mismatch;
using test::kRoot;
using test::read_json;
using test::show;

std::string from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// Fixture data shared by the tests of one tokenizer (parsed once: the files are large).
struct Golden {
  nlohmann::json texts, golden;
};
const Golden& golden(const std::string& name) {
  static std::map<std::string, Golden> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    Golden g{read_json(kRoot + "/tests/fixtures/tokenizer/texts.json"),
             read_json(kRoot + "/tests/fixtures/tokenizer/golden_" + name + ".json")};
    it = cache.emplace(name, std::move(g)).first;
  }
  return it->second;
}

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, EncodeAndDecodeMatchReference) {
  const Golden& g = golden(GetParam());
  const Tokenizer tok = Tokenizer::load(kRoot + "/data/tokenizers/" + GetParam());
  EXPECT_EQ(tok.vocab_size(), g.golden["vocab_size"].get<std::size_t>());
  const auto& texts = g.texts["texts"];
  const auto& cases = g.golden["cases"];
  ASSERT_EQ(texts.size(), cases.size());
  ASSERT_GE(texts.size(), 300u);
  int failures = 0;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    const std::string mismatch = golden_case_mismatch(tok, text, cases[i]);
    if (!mismatch.empty() && ++failures <= 8)
      ADD_FAILURE() << GetParam() << " text #" << i << " " << nlohmann::json(text).dump()
                    << mismatch;
  }
  EXPECT_EQ(failures, 0) << "of " << texts.size() << " texts";
}

TEST_P(TokenizerParity, InvalidUtf8MatchesPythonReplace) {
  const Golden& g = golden(GetParam());
  const Tokenizer tok = Tokenizer::load(kRoot + "/data/tokenizers/" + GetParam());
  for (const auto& c : g.golden["invalid_utf8"]) {
    const std::string raw = from_hex(c["hex"].get<std::string>());
    EXPECT_EQ(utf8::to_valid_lossy(raw), c["repaired"].get<std::string>()) << c["hex"];
    EXPECT_EQ(tok.encode(raw), c["ids"].get<std::vector<int32_t>>()) << c["hex"];
  }
}

TEST_P(TokenizerParity, VariantsMatchReference) {
  const Golden& g = golden(GetParam());
  const nlohmann::json base = read_json(kRoot + "/data/tokenizers/" + GetParam() + "/tokenizer.json");
  const auto& texts = g.texts["variant_texts"];
  for (const auto& variant : g.golden["variants"]) {
    nlohmann::json j = base;
    apply_tokenizer_patch(j, variant["change"]);
    const std::string name = variant["name"].get<std::string>();
    const Tokenizer tok = Tokenizer::from_json(j, nullptr, GetParam() + " variant " + name);
    const auto& cases = variant["cases"];
    ASSERT_EQ(cases.size(), texts.size());
    int failures = 0;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      const std::string text = texts[i].get<std::string>();
      const auto expected = cases[i]["ids"].get<std::vector<int32_t>>();
      const auto ids = tok.encode(text);
      const std::string decoded = tok.decode(ids);
      if ((ids != expected || decoded != cases[i]["decoded"].get<std::string>()) && ++failures <= 4) {
        ADD_FAILURE() << name << " text #" << i << " " << nlohmann::json(text).dump() << "\n  ids      "
                      << show(ids) << "\n  expected " << show(expected) << "\n  decoded "
                      << nlohmann::json(decoded).dump() << " expected " << cases[i]["decoded"].dump();
      }
    }
    EXPECT_EQ(failures, 0) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(RealTokenizers, TokenizerParity, ::testing::Values("deepseek-v3", "llama-2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace refinery::tokenizer
