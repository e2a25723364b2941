// Unit tests for the tokenizer pieces: UTF-8 repair, the byte-level map, regex semantics, split
// behaviors, the BPE model, added-token matching, decoders, post-processors, load errors.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/core/error.hpp"
#include "engine/tokenizer/added_tokens.hpp"
#include "engine/tokenizer/byte_level.hpp"
#include "engine/tokenizer/decoder.hpp"
#include "engine/tokenizer/pre_tokenizer.hpp"
#include "engine/tokenizer/regex.hpp"
#include "engine/tokenizer/tokenizer.hpp"
#include "engine/tokenizer/utf8.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::tokenizer {
namespace {

using nlohmann::json;
const std::string kRoot = REFINERY_SOURCE_DIR;
const std::string kFffd = "\xEF\xBF\xBD";

TEST(TokenizerUtf8, LossyRepairUsesMaximalSubparts) {
  // Expected values are Python's bytes.decode("utf-8", "replace").
  EXPECT_EQ(utf8::to_valid_lossy("abc"), "abc");
  EXPECT_EQ(utf8::to_valid_lossy("\xff"), kFffd);
  EXPECT_EQ(utf8::to_valid_lossy("\xc0\xaf"), kFffd + kFffd);              // overlong: per byte
  EXPECT_EQ(utf8::to_valid_lossy("\xed\xa0\x80"), kFffd + kFffd + kFffd);  // UTF-8 surrogate
  EXPECT_EQ(utf8::to_valid_lossy("\xf0\x9f\x98"), kFffd);                  // truncated: one
  EXPECT_EQ(utf8::to_valid_lossy("\xe4\xbdx"), kFffd + "x");
  EXPECT_EQ(utf8::to_valid_lossy("\xf4\x90\x80\x80"), kFffd + kFffd + kFffd + kFffd);
  std::size_t replaced = 0;
  utf8::to_valid_lossy("a\xff" "b\xfe", &replaced);
  EXPECT_EQ(replaced, 2u);
  EXPECT_TRUE(utf8::is_valid("\xf0\x9f\x98\x80"));
  EXPECT_FALSE(utf8::is_valid("\xed\xa0\x80"));
}

TEST(TokenizerByteLevel, MapsEveryByteToOneCharAndBack) {
  EXPECT_EQ(byte_level::byte_to_char(' '), "\xC4\xA0");   // Ġ
  EXPECT_EQ(byte_level::byte_to_char('\n'), "\xC4\x8A");  // Ċ
  EXPECT_EQ(byte_level::byte_to_char('A'), "A");
  for (int b = 0; b < 256; ++b) {
    const std::string& s = byte_level::byte_to_char(static_cast<unsigned char>(b));
    std::size_t pos = 0;
    const char32_t cp = utf8::decode_at(s, pos);
    EXPECT_EQ(pos, s.size());
    ASSERT_TRUE(byte_level::char_to_byte(cp).has_value());
    EXPECT_EQ(*byte_level::char_to_byte(cp), b);
  }
  EXPECT_FALSE(byte_level::char_to_byte(U'\u4e2d').has_value());
}

TEST(TokenizerRegex, WhitespaceFollowsOnigurumaNotPcre2) {
  std::vector<std::pair<std::size_t, std::size_t>> m;
  Regex space(R"(\s+)", false, "test");
  space.find_all("a\xe1\xa0\x8e" "b c", m);  // U+180E is not \s in Oniguruma
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0], std::make_pair(std::size_t{5}, std::size_t{6}));
  Regex literal(". ", true, "test");
  literal.find_all("a. b.c. ", m);
  EXPECT_EQ(m.size(), 2u);
  EXPECT_THROW(Regex("(unclosed", false, "file.json at /x"), Error);
}

std::vector<std::string> split_texts(const std::string& text, PreTokenizer::Behavior behavior, bool invert) {
  Regex re(R"(\w+|[^\w\s]+)", false, "test");
  std::vector<std::pair<std::size_t, std::size_t>> m;
  re.find_all(text, m);
  std::vector<Piece> out;
  split_by_matches(text, true, m, behavior, invert, out);
  std::vector<std::string> texts;
  for (const auto& p : out) texts.push_back(p.text);
  return texts;
}

TEST(TokenizerSplit, BehaviorsMatchTokenizersExamples) {
  // The examples of tokenizers/src/pre_tokenizers/split.rs (pattern inverted: splits on spaces).
  using B = PreTokenizer::Behavior;
  const std::string s = "How are you doing?";
  using V = std::vector<std::string>;
  EXPECT_EQ(split_texts(s, B::kRemoved, true), (V{"How", "are", "you", "doing", "?"}));
  EXPECT_EQ(split_texts(s, B::kIsolated, true), (V{"How", " ", "are", " ", "you", " ", "doing", "?"}));
  EXPECT_EQ(split_texts(s, B::kMergedWithPrevious, true), (V{"How ", "are ", "you ", "doing", "?"}));
  EXPECT_EQ(split_texts(s, B::kMergedWithNext, true), (V{"How", " are", " you", " doing", "?"}));
  EXPECT_EQ(split_texts(s, B::kContiguous, true), (V{"How", " ", "are", " ", "you", " ", "doing?"}));
}

// A tiny BPE tokenizer.json.
json tiny_bpe() {
  return json::parse(R"({
    "added_tokens": [{"id": 7, "content": "<s>", "special": true, "normalized": false,
                      "lstrip": false, "rstrip": false, "single_word": false}],
    "normalizer": null, "pre_tokenizer": null, "decoder": null,
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [7], "tokens": ["<s>"]}}},
    "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false,
      "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "bc": 5, "abc": 6, "<s>": 7},
      "merges": [["b", "c"], "a b", ["a", "bc"]]}})");
}

TEST(TokenizerBpe, MergesByRankWithFusedUnknown) {
  const Tokenizer tok = Tokenizer::from_json(tiny_bpe(), nullptr, "tiny.json");
  // "abc": rank 0 merges b+c first, then a+bc (rank 2) -> abc.
  EXPECT_EQ(tok.encode("abc"), (std::vector<int32_t>{6}));
  EXPECT_EQ(tok.encode("ab"), (std::vector<int32_t>{4}));
  EXPECT_EQ(tok.encode("xya"), (std::vector<int32_t>{0, 1}));  // unknown run fused
  EXPECT_EQ(tok.encode("a<s>b", true), (std::vector<int32_t>{7, 1, 7, 2}));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{1, 2, 99}), "a b");  // no decoder: joined by spaces
  EXPECT_EQ(tok.decode(std::vector<int32_t>{7, 1}, true), "a");
  EXPECT_EQ(tok.vocab_size(), 8u);
  EXPECT_EQ(tok.token_to_id("bc"), 5);
  EXPECT_EQ(tok.id_to_token(6), "abc");
  EXPECT_THROW(tok.id_to_token(1000), Error);
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(TokenizerAddedTokens, LstripRstripAndSingleWord) {
  AddedToken mask{1, "<m>", "<m>", false, true, false, false, true};
  AddedToken r{2, "<r>", "<r>", false, false, true, false, true};
  AddedToken word{3, "cat", "cat", true, false, false, false, false};
  AddedTokenMatcher matcher({"<m>", "<r>", "cat"}, {&mask, &r, &word});
  std::vector<Segment> seg;
  matcher.split("a  <m> b<r>  c concat cat", seg);
  ASSERT_EQ(seg.size(), 6u);  // "a", <m>, " b", <r>, "c concat ", cat
  EXPECT_EQ(seg[0].end, 1u);                       // "a" — lstrip took the two spaces
  EXPECT_EQ(seg[1].id, 1);
  EXPECT_EQ(seg[1].start, 1u);
  EXPECT_EQ(seg[3].id, 2);
  EXPECT_EQ(seg[3].end, 13u);                      // rstrip took the two spaces
  EXPECT_FALSE(seg[4].id.has_value());             // "c concat " — "cat" inside a word is no match
  EXPECT_EQ(seg[5].id, 3);
}

TEST(TokenizerDecoder, ByteFallbackAndStripFollowTokenizers) {
  const Decoder d = Decoder::from_json(json::parse(R"({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
      {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})"), {"t", ""});
  EXPECT_EQ(d.decode({"▁Hey", "<0xE5>", "<0x8f>", "<0xab>", "▁a"}), "Hey叫 a");
  EXPECT_EQ(d.decode({"<0xE5>", "<0x8f>", "a"}), kFffd + kFffd + "a");  // one U+FFFD per byte
  const Decoder bl = Decoder::from_json(json::parse(R"({"type": "ByteLevel"})"), {"t", ""});
  EXPECT_EQ(bl.decode({"Hello", "\xC4\xA0world", "<|x|>"}), "Hello world<|x|>");
}

TEST(TokenizerLoad, RealTokenizersBosEos) {
  const Tokenizer ds = Tokenizer::load(kRoot + "/data/tokenizers/deepseek-v3/tokenizer.json");
  EXPECT_EQ(ds.bos_id(), 0);
  EXPECT_EQ(ds.eos_id(), 1);
  EXPECT_EQ(ds.encode("Hello", true), ds.encode("Hello"));  // post_processor ByteLevel: no BOS
  const Tokenizer llama = Tokenizer::load(kRoot + "/data/tokenizers/llama-2");
  EXPECT_EQ(llama.bos_id(), 1);
  EXPECT_EQ(llama.eos_id(), 2);
  EXPECT_EQ(llama.encode("Hello", true).front(), 1);
  EXPECT_EQ(llama.id_to_token(13), "<0x0A>");
}

// The user error loading tokenizer JSON `j` gives.
std::string error_of(const json& j) {
  return refinery::test::error_message_of([&] { Tokenizer::from_json(j, nullptr, "bad.json"); });
}

TEST(TokenizerLoad, ErrorsNameFileAndJsonPath) {
  json j = tiny_bpe();
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(error_of(j).find("bad.json at /model/type"), std::string::npos) << error_of(j);
  j = tiny_bpe();
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [{"type": "BertPreTokenizer"}]})");
  EXPECT_NE(error_of(j).find("/pre_tokenizer/pretokenizers/0/type"), std::string::npos) << error_of(j);
  j = tiny_bpe();
  j["normalizer"] = json::parse(R"({"type": "Precompiled"})");
  EXPECT_NE(error_of(j).find("/normalizer/type"), std::string::npos);
  j = tiny_bpe();
  j["model"]["merges"].push_back("a zz");
  EXPECT_NE(error_of(j).find("/model/merges/3"), std::string::npos) << error_of(j);

  EXPECT_THROW(Tokenizer::load(kRoot + "/no/such/tokenizer.json"), Error);
  const auto dir = std::filesystem::temp_directory_path() / "refinery_tokenizer_bad_json";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << "{\"model\": ";
  try {
    Tokenizer::load(dir);
    ADD_FAILURE() << "invalid JSON loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace refinery::tokenizer
