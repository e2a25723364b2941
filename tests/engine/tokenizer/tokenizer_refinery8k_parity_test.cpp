// Parity with Hugging Face `tokenizers` for the teacher's own tokenizer (data/tokenizers/refinery-8k:
// byte-level BPE with 8192 tokens trained on the development corpus, DeepSeek-V3's pre-tokenizer,
// TemplateProcessing "<|bos|> $A"). Golden ids were written by scripts/make_teacher_tokenizer.py with
// tokenizers 0.23.3: the varied texts of tests/fixtures/tokenizer/texts.json plus 1 KB slices of
// 24 documents of the validation split (prose, Python code, Perl docs).

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.hpp"
#include "golden_support.hpp"

namespace refinery::tokenizer {
namespace {

using test::golden_case_mismatch;
using test::kRoot;
using test::read_json;
using test::show;

struct Refinery8kFixture {
  nlohmann::json golden;
  Tokenizer tokenizer;
};
const Refinery8kFixture& fixture() {
  static const Refinery8kFixture f{read_json(kRoot + "/tests/fixtures/tokenizer/golden_refinery-8k.json"),
                                   Tokenizer::load(kRoot + "/data/tokenizers/refinery-8k")};
  return f;
}

TEST(TokenizerRefinery8kParity, EncodeAndDecodeMatchReference) {
  const auto& [golden, tok] = fixture();
  EXPECT_EQ(tok.vocab_size(), golden["vocab_size"].get<std::size_t>());
  const auto& cases = golden["cases"];
  // texts.json has 346 texts; the validation slices add 24.
  ASSERT_EQ(cases.size(), 370u);
  int failures = 0;
  std::size_t tokens = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const std::string text = cases[i]["text"].get<std::string>();
    tokens += cases[i]["ids"].size();
    const std::string mismatch = golden_case_mismatch(tok, text, cases[i]);
    if (!mismatch.empty() && ++failures <= 8)
      ADD_FAILURE() << "text #" << i << " " << nlohmann::json(text).dump().substr(0, 200) << mismatch;
  }
  EXPECT_EQ(failures, 0) << "of " << cases.size() << " texts";
  // The golden file is not trivially short: the corpus slices alone are ~24 KB of text.
  EXPECT_GT(tokens, 8000u);
}

TEST(TokenizerRefinery8kParity, SpecialTokensAndVocabulary) {
  const auto& tok = fixture().tokenizer;
  EXPECT_EQ(tok.vocab_size(), 8192u);
  ASSERT_TRUE(tok.bos_id().has_value());
  ASSERT_TRUE(tok.eos_id().has_value());
  EXPECT_EQ(*tok.bos_id(), 0);
  EXPECT_EQ(*tok.eos_id(), 1);
  EXPECT_EQ(tok.id_to_token(0), "<|bos|>");
  EXPECT_EQ(tok.id_to_token(1), "<|eos|>");
  // add_special_tokens puts exactly one BOS in front (the post-processor's template), never an EOS.
  const auto plain = tok.encode("def f(x):\n    return x\n");
  const auto special = tok.encode("def f(x):\n    return x\n", true);
  ASSERT_EQ(special.size(), plain.size() + 1);
  EXPECT_EQ(special.front(), 0);
  EXPECT_EQ(std::vector<int32_t>(special.begin() + 1, special.end()), plain) << show(special);
  // The special tokens written in text are cut out as single ids.
  const auto marked = tok.encode("a<|eos|><|bos|>b");
  ASSERT_EQ(marked.size(), 4u) << show(marked);
  EXPECT_EQ(marked[1], 1);
  EXPECT_EQ(marked[2], 0);
  // Byte-level: any byte string round-trips, and every id is below the vocabulary size.
  const std::string bytes = "tab\there \xC3\xA9\xE2\x82\xAC \xF0\x9F\x98\x80 $_ =~ s/x//g;";
  const auto ids = tok.encode(bytes);
  for (int32_t id : ids) EXPECT_LT(id, 8192);
  EXPECT_EQ(tok.decode(ids), bytes);
}

}  // namespace
}  // namespace refinery::tokenizer
