// Multiple-choice accuracy the lm-evaluation-harness way vs numpy (tests/fixtures/eval).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "engine/core/error.hpp"
#include "engine/eval/multiple_choice.hpp"
#include "table_model.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::eval {
namespace {

using refinery::test::error_message_of;
using testing::TableModel;

class EvalMultipleChoice : public ::testing::Test {
 protected:
  void SetUp() override {
    f_ = testing::load_eval_fixture();
    path_ = std::filesystem::temp_directory_path() /
            ("refinery_mc_" + std::to_string(::getpid()) + ".jsonl");
  }
  void TearDown() override { std::filesystem::remove(path_); }
  void write(const std::string& text) { std::ofstream(path_) << text; }

  nlohmann::json f_;
  std::filesystem::path path_;
};

TEST_F(EvalMultipleChoice, MatchesTheHarnessComputation) {
  std::string jsonl;
  for (const auto& doc : f_["multiple_choice_docs"]) jsonl += doc.dump() + "\n\n";
  write(jsonl);
  const auto items = load_multiple_choice(path_.string());
  ASSERT_EQ(items.size(), 6u);
  EXPECT_EQ(items[1].answer, 0);  // given as the choice's text
  const int64_t vocab = f_["vocab"];
  TableModel model(f_["model"], vocab);
  const auto r = evaluate_multiple_choice(
      model, items, [&](std::string_view s) { return testing::byte_encode(s, vocab); });
  const auto& e = f_["multiple_choice"];
  ASSERT_EQ(r.loglikelihoods.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    for (size_t c = 0; c < r.loglikelihoods[i].size(); ++c)
      EXPECT_NEAR(r.loglikelihoods[i][c], e["loglikelihoods"][i][c].get<double>(), 1e-9)
          << i << "/" << c;
  EXPECT_NEAR(r.acc, e["acc"].get<double>(), 1e-12);
  EXPECT_NEAR(r.acc_norm, e["acc_norm"].get<double>(), 1e-12);
  EXPECT_NEAR(r.acc_stderr, e["acc_stderr"].get<double>(), 1e-12);
  EXPECT_NEAR(r.acc_norm_stderr, e["acc_norm_stderr"].get<double>(), 1e-12);
  EXPECT_NE(r.acc, r.acc_norm);  // the fixture separates the two metrics
}

TEST_F(EvalMultipleChoice, ContinuationIsScoredFromTheRightPositions) {
  // ll("x", [a, b]) = log q(a | x) + log q(b | x, a): check against direct scoring.
  const int64_t vocab = f_["vocab"];
  TableModel model(f_["model"], vocab);
  const std::vector<int32_t> ctx = {3, 4}, cont = {5, 6, 7};
  const double ll = continuation_loglikelihood(model, ctx, cont, 256);
  double expected = 0;
  std::vector<int32_t> all = {3, 4, 5, 6, 7};
  model.score(std::span<const int32_t>(all.data(), 4), [&](int64_t first, const float* x, int64_t rows) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = first + r;
      if (p < 1) continue;
      double m = -1e30, s = 0;
      for (int64_t v = 0; v < vocab; ++v) m = std::max(m, double(x[r * vocab + v]));
      for (int64_t v = 0; v < vocab; ++v) s += std::exp(double(x[r * vocab + v]) - m);
      expected += double(x[r * vocab + all[p + 1]]) - m - std::log(s);
    }
  }, 256);
  EXPECT_NEAR(ll, expected, 1e-12);
}

TEST_F(EvalMultipleChoice, BadItemsAreUserErrorsWithTheLine) {
  auto expect_error = [&](const std::string& text, const std::string& needle) {
    SCOPED_TRACE(text);
    write(text);
    const std::string message = error_message_of([&] { load_multiple_choice(path_.string()); });
    EXPECT_NE(message.find(needle), std::string::npos) << message;
  };
  expect_error("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 2}\n", ":1:");
  expect_error("\n{\"context\": \"a\", \"choices\": [\"b\"], \"answer\": 0}\n", ":2:");
  expect_error("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": \"d\"}\n", "not one of");
  expect_error("{\"choices\": [\"b\", \"c\"], \"answer\": 0}\n", "context");
  expect_error("not json\n", "JSON");
  expect_error("\n\n", "no items");
}

}  // namespace
}  // namespace refinery::eval
