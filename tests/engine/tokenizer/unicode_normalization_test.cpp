// Unicode normalization (NFC/NFD/NFKC/NFKD) against Python's unicodedata.normalize, frozen into
// tests/fixtures/tokenizer/unicode_normalization_cases.json by make_unicode_tables.py: hand-picked
// and random strings, plus a hash of every single code point's four forms per block of 4096.

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "engine/tokenizer/normalizer.hpp"
#include "engine/tokenizer/unicode_normalization.hpp"
#include "engine/tokenizer/unicode_tables.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer::unicode {
namespace {

using nlohmann::json;
constexpr NormalizationForm kForms[] = {NormalizationForm::kNFC, NormalizationForm::kNFD, NormalizationForm::kNFKC,
                                        NormalizationForm::kNFKD};
constexpr const char* kFormNames[] = {"NFC", "NFD", "NFKC", "NFKD"};

const json& cases() {
  static const json doc = [] {
    const std::string path = std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/tokenizer/unicode_normalization_cases.json";
    std::ifstream in(path, std::ios::binary);
    EXPECT_TRUE(in.good()) << path;
    std::ostringstream buffer;
    buffer << in.rdbuf();
    return json::parse(buffer.str());
  }();
  return doc;
}

std::string hex_of(const std::string& s) {
  std::string out;
  for (std::size_t pos = 0; pos < s.size();) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%s%04X", out.empty() ? "" : " ", static_cast<unsigned>(utf8::decode_at(s, pos)));
    out += buf;
  }
  return out;
}

TEST(UnicodeNormalization, TablesMatchFixtureVersion) {
  EXPECT_EQ(std::string(kUnicodeVersion), cases()["unicode_version"].get<std::string>());
}

TEST(UnicodeNormalization, StringsMatchUnicodedata) {
  const auto& list = cases()["cases"];
  ASSERT_GE(list.size(), 1000u);
  int failures = 0;
  for (const auto& c : list) {
    const std::string source = c[0].get<std::string>();
    for (int f = 0; f < 4; ++f) {
      const std::string expected = c[f + 1].get<std::string>();
      const std::string got = normalize(source, kForms[f]);
      if (got != expected && ++failures <= 10)
        ADD_FAILURE() << kFormNames[f] << "(" << hex_of(source) << ") = " << hex_of(got) << ", expected "
                      << hex_of(expected);
    }
  }
  EXPECT_EQ(failures, 0);
}

// Every code point (surrogates excepted), every form: FNV-1a of the UTF-8 of each result plus a 0
// byte, per block, equals the hash Python computed.
TEST(UnicodeNormalization, EveryCodePointMatchesUnicodedata) {
  const auto& blocks = cases()["blocks"];
  const char32_t block_size = cases()["block_size"].get<char32_t>();
  ASSERT_EQ(blocks.size(), (0x110000u + block_size - 1) / block_size);
  int failures = 0;
  for (const auto& block : blocks) {
    const char32_t first = block["first"].get<char32_t>();
    for (int f = 0; f < 4; ++f) {
      uint64_t h = 0xCBF29CE484222325ull;
      std::string single;
      for (char32_t cp = first; cp < first + block_size; ++cp) {
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        single.clear();
        utf8::append(single, cp);
        const std::string out = normalize(single, kForms[f]);
        for (const char ch : out) h = (h ^ static_cast<unsigned char>(ch)) * 0x100000001B3ull;
        h *= 0x100000001B3ull;  // the 0 separator: xor with 0 is a no-op
      }
      char buf[17];
      std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
      if (block[kFormNames[f]].get<std::string>() != buf && ++failures <= 10)
        ADD_FAILURE() << kFormNames[f] << " differs from unicodedata in the block starting at U+" << std::hex
                      << static_cast<unsigned>(first);
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(UnicodeNormalization, HandPickedExamples) {
  // e + COMBINING ACUTE composes; ANGSTROM SIGN is a singleton (never recomposed to itself).
  EXPECT_EQ(normalize("e\xCC\x81", NormalizationForm::kNFC), "\xC3\xA9");
  EXPECT_EQ(normalize("\xE2\x84\xAB", NormalizationForm::kNFC), "\xC3\x85");
  EXPECT_EQ(normalize("\xC3\xA9", NormalizationForm::kNFD), "e\xCC\x81");
  // Hangul jamo L V T -> one syllable, and back.
  EXPECT_EQ(normalize("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8", NormalizationForm::kNFC), "\xEA\xB0\x81");
  EXPECT_EQ(normalize("\xEA\xB0\x81", NormalizationForm::kNFD), "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8");
  // fi ligature: compatibility only.
  EXPECT_EQ(normalize("\xEF\xAC\x81", NormalizationForm::kNFC), "\xEF\xAC\x81");
  EXPECT_EQ(normalize("\xEF\xAC\x81", NormalizationForm::kNFKC), "fi");
  // Canonical reordering: dot below (220) before acute (230).
  EXPECT_EQ(normalize("a\xCC\x81\xCC\xA3", NormalizationForm::kNFD), "a\xCC\xA3\xCC\x81");
  // Invalid UTF-8 is repaired, not passed through.
  EXPECT_EQ(normalize("e\xCC\x81\xFF", NormalizationForm::kNFC), "\xC3\xA9\xEF\xBF\xBD");
  EXPECT_EQ(combining_class(0x301), 230);
  EXPECT_EQ(combining_class('a'), 0);
  EXPECT_EQ(parse_normalization_form("NFKD"), NormalizationForm::kNFKD);
  EXPECT_FALSE(parse_normalization_form("nfc").has_value());
}

TEST(UnicodeNormalization, NormalizerFactoryAcceptsForms) {
  const auto nfc = Normalizer::from_json(json::parse(R"({"type": "NFC"})"), JsonWhere("test.json", "/normalizer"));
  std::string text = "cafe\xCC\x81";
  nfc.normalize(text);
  EXPECT_EQ(text, "caf\xC3\xA9");
  const auto seq = Normalizer::from_json(
      json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFKD"}, {"type": "Replace",
                     "pattern": {"String": "\u0301"}, "content": ""}]})"),
      JsonWhere("test.json", "/normalizer"));
  text = "\xC3\xA9\xEF\xAC\x81";
  seq.normalize(text);
  EXPECT_EQ(text, "efi");
}

}  // namespace
}  // namespace refinery::tokenizer::unicode
