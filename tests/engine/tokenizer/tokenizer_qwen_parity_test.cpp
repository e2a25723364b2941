// Parity with Hugging Face `tokenizers` for a Qwen2-style tokenizer: NFC normalizer, Qwen2's Split
// regex + ByteLevel(use_regex=false) pre-tokenizer, ByteLevel post-processor and decoder,
// <|endoftext|>/<|im_start|>/<|im_end|> added tokens. It is built at test time from the DeepSeek-V3
// vocabulary and merges plus tests/fixtures/tokenizer/qwen2_style_patch.json; the golden ids were
// written by tests/fixtures/tokenizer/make_qwen_golden.py (texts.json plus texts that NFC changes).

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "engine/tokenizer/tokenizer.hpp"
#include "golden_support.hpp"

namespace refinery::tokenizer {
namespace {

using test::apply_tokenizer_patch;
using test::golden_case_mismatch;
using test::kRoot;
using test::read_json;

// The patched tokenizer and the golden file, built once (the DeepSeek file is 8 MB).
struct QwenFixture {
  nlohmann::json golden;
  Tokenizer tokenizer;
};
const QwenFixture& fixture() {
  static const QwenFixture f = [] {
    const auto patch = read_json(kRoot + "/tests/fixtures/tokenizer/qwen2_style_patch.json");
    nlohmann::json j = read_json(kRoot + "/" + patch["base"].get<std::string>());
    apply_tokenizer_patch(j, patch);
    return QwenFixture{read_json(kRoot + "/tests/fixtures/tokenizer/golden_qwen2-style.json"),
                       Tokenizer::from_json(j, nullptr, "qwen2-style tokenizer.json")};
  }();
  return f;
}

TEST(TokenizerQwenParity, EncodeAndDecodeMatchReference) {
  const auto& [golden, tok] = fixture();
  EXPECT_EQ(tok.vocab_size(), golden["vocab_size"].get<std::size_t>());
  const auto& cases = golden["cases"];
  ASSERT_GE(cases.size(), 370u);
  int failures = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const std::string text = cases[i]["text"].get<std::string>();
    const std::string mismatch = golden_case_mismatch(tok, text, cases[i]);
    if (!mismatch.empty() && ++failures <= 8)
      ADD_FAILURE() << "text #" << i << " " << nlohmann::json(text).dump() << mismatch;
  }
  EXPECT_EQ(failures, 0) << "of " << cases.size() << " texts";
}

TEST(TokenizerQwenParity, NfcAppliesBeforeBpe) {
  const auto& tok = fixture().tokenizer;
  // A decomposed accent encodes like the precomposed one, and decodes to the precomposed form.
  EXPECT_EQ(tok.encode("cafe\xCC\x81"), tok.encode("caf\xC3\xA9"));
  EXPECT_EQ(tok.decode(tok.encode("cafe\xCC\x81")), "caf\xC3\xA9");
  // Hangul conjoining jamo compose to the syllable.
  EXPECT_EQ(tok.encode("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"), tok.encode("\xED\x95\x9C"));
  // Chat markup: the special tokens are kept whole.
  const auto im_start = tok.token_to_id("<|im_start|>");
  ASSERT_TRUE(im_start.has_value());
  const auto ids = tok.encode("<|im_start|>user");
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), *im_start);
}

}  // namespace
}  // namespace refinery::tokenizer
