// Perplexity over non-overlapping and strided windows vs numpy (tests/fixtures/eval).
#include <gtest/gtest.h>

#include "engine/core/error.hpp"
#include "engine/eval/evaluator.hpp"
#include "engine/eval/token_windows.hpp"
#include "table_model.hpp"

namespace refinery::eval {
namespace {

using testing::TableModel;

TEST(EvalWindows, NonOverlappingDropsTheRemainder) {
  const auto w = non_overlapping_windows(103, 16);
  ASSERT_EQ(w.size(), 6u);
  EXPECT_EQ(w[5].begin, 80);
  EXPECT_EQ(w[5].length, 16);
  EXPECT_EQ(w[5].first_target, 1);
  EXPECT_EQ(w[5].scored(), 15);
}

TEST(EvalWindows, StridedMatchesTheHuggingFaceLoop) {
  const auto f = testing::load_eval_fixture();
  const auto w = strided_windows(103, f["seq_len"], f["stride"]);
  const auto& expected = f["windows_strided"];
  ASSERT_EQ(w.size(), expected.size());
  int64_t scored = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_EQ(w[i].begin, expected[i][0].get<int64_t>()) << i;
    EXPECT_EQ(w[i].length, expected[i][1].get<int64_t>()) << i;
    EXPECT_EQ(w[i].first_target, expected[i][2].get<int64_t>()) << i;
    scored += w[i].scored();
  }
  EXPECT_EQ(scored, 102);  // every token but the first, once
}

TEST(EvalWindows, BadArgumentsAreUserErrors) {
  EXPECT_THROW(non_overlapping_windows(10, 16), Error);
  EXPECT_THROW(non_overlapping_windows(10, 1), Error);
  EXPECT_THROW(strided_windows(100, 16, 0), Error);
  EXPECT_THROW(strided_windows(100, 16, 17), Error);
}

TEST(EvalPerplexity, NonOverlappingMatchesNumpy) {
  const auto f = testing::load_eval_fixture();
  TableModel model(f["model"], f["vocab"]);
  const auto tokens = testing::fixture_tokens(f);
  const auto windows = non_overlapping_windows(static_cast<int64_t>(tokens.size()), f["seq_len"]);
  const EvalResult r = evaluate(model, tokens, windows, nullptr);
  EXPECT_EQ(r.nll.count, f["perplexity"]["tokens"].get<int64_t>());
  EXPECT_NEAR(r.nll.sum, f["perplexity"]["nll_sum"].get<double>(), 1e-9);
  EXPECT_NEAR(r.perplexity(), f["perplexity"]["perplexity"].get<double>(), 1e-9);
  EXPECT_EQ(r.forwarded_tokens, 96);
  EXPECT_EQ(r.windows, 6);
}

TEST(EvalPerplexity, StridedMatchesNumpy) {
  const auto f = testing::load_eval_fixture();
  TableModel model(f["model"], f["vocab"]);
  const auto tokens = testing::fixture_tokens(f);
  const auto windows = strided_windows(static_cast<int64_t>(tokens.size()), f["seq_len"], f["stride"]);
  const EvalResult r = evaluate(model, tokens, windows, nullptr);
  EXPECT_EQ(r.nll.count, f["perplexity_strided"]["tokens"].get<int64_t>());
  EXPECT_NEAR(r.perplexity(), f["perplexity_strided"]["perplexity"].get<double>(), 1e-9);
}

TEST(EvalPerplexity, WindowLongerThanTheModelContextIsAUserError) {
  const auto f = testing::load_eval_fixture();
  TableModel model(f["model"], f["vocab"], 5, /*max_len=*/8);
  const auto tokens = testing::fixture_tokens(f);
  const auto windows = non_overlapping_windows(static_cast<int64_t>(tokens.size()), 16);
  try {
    evaluate(model, tokens, windows, nullptr);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_NE(std::string(e.what()).find("--seq-len"), std::string::npos) << e.what();
  }
}

TEST(EvalPerplexity, TokenOutsideTheVocabularyIsAUserError) {
  const auto f = testing::load_eval_fixture();
  TableModel model(f["model"], f["vocab"]);
  std::vector<int32_t> tokens(32, 1);
  tokens[7] = 99;
  const auto windows = non_overlapping_windows(32, 16);
  EXPECT_THROW(evaluate(model, tokens, windows, nullptr), Error);
}

}  // namespace
}  // namespace refinery::eval
