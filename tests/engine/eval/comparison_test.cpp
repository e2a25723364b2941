// KL divergence, top-1 agreement, Δp and perplexity ratio against a reference model, a full
// logit cache and a top-k logit cache, vs numpy (tests/fixtures/eval).
#include <gtest/gtest.h>

#include <filesystem>
#include <unistd.h>

#include "engine/core/error.hpp"
#include "engine/eval/evaluator.hpp"
#include "engine/eval/log_softmax.hpp"
#include "engine/io/logit_cache.hpp"
#include "table_model.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::eval {
namespace {

using refinery::test::error_message_of;
using testing::TableModel;

void expect_matches(const ComparisonResult& r, const nlohmann::json& e, double tol) {
  EXPECT_EQ(r.tokens, e["tokens"].get<int64_t>());
  EXPECT_NEAR(r.perplexity, e["perplexity"].get<double>(), tol * e["perplexity"].get<double>());
  EXPECT_NEAR(r.perplexity_uncertainty, e["perplexity_uncertainty"].get<double>(),
              tol * e["perplexity"].get<double>());
  EXPECT_NEAR(r.ref_perplexity, e["ref_perplexity"].get<double>(),
              tol * e["ref_perplexity"].get<double>());
  EXPECT_NEAR(r.ln_ppl_ratio, e["ln_ppl_ratio"].get<double>(), tol);
  EXPECT_NEAR(r.ln_ppl_ratio_uncertainty, e["ln_ppl_ratio_uncertainty"].get<double>(), tol);
  EXPECT_NEAR(r.ppl_ratio, e["ppl_ratio"].get<double>(), tol);
  EXPECT_NEAR(r.kl_mean, e["kl_mean"].get<double>(), tol);
  EXPECT_NEAR(r.kl_mean_uncertainty, e["kl_mean_uncertainty"].get<double>(), tol);
  ASSERT_EQ(r.kl_percentiles.size(), 10u);
  for (const auto& [key, value] : r.kl_percentiles)
    EXPECT_NEAR(value, e["kl_percentiles"][key].get<double>(), 1e-6) << key;
  EXPECT_NEAR(r.top1_agreement, e["top1_agreement"].get<double>(), 1e-12);
  EXPECT_NEAR(r.top1_agreement_uncertainty, e["top1_agreement_uncertainty"].get<double>(), 1e-12);
  EXPECT_NEAR(r.rms_dp, e["rms_dp"].get<double>(), tol);
  EXPECT_NEAR(r.rms_dp_uncertainty, e["rms_dp_uncertainty"].get<double>(), tol);
  EXPECT_EQ(r.ref_tail_tokens, e["ref_tail_tokens"].get<int64_t>());
}

class EvalComparison : public ::testing::Test {
 protected:
  void SetUp() override {
    f_ = testing::load_eval_fixture();
    tokens_ = testing::fixture_tokens(f_);
    windows_ = non_overlapping_windows(static_cast<int64_t>(tokens_.size()), f_["seq_len"]);
    dir_ = std::filesystem::temp_directory_path() /
           ("refinery_eval_cmp_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes the reference model's logits over the windows into a cache, as `refine logits` does.
  std::string write_cache(int64_t top_k) {
    const std::string path = (dir_ / ("ref_k" + std::to_string(top_k) + ".h5")).string();
    TableModel ref(f_["ref"], f_["vocab"]);
    std::vector<int32_t> all;
    for (const auto& w : windows_)
      all.insert(all.end(), tokens_.begin() + w.begin, tokens_.begin() + w.begin + w.length);
    io::LogitCacheInfo info{"ref", "fp", top_k, f_["vocab"], f_["seq_len"],
                            static_cast<int64_t>(windows_.size()), io::data_fingerprint(all)};
    io::LogitCacheWriter writer(path, info);
    const int64_t vocab = f_["vocab"];
    for (const auto& w : windows_) {
      std::span<const int32_t> wt(tokens_.data() + w.begin, static_cast<size_t>(w.length));
      writer.begin_sequence(wt);
      ref.score(wt, [&](int64_t, const float* logits, int64_t rows) {
        if (top_k == 0) {
          writer.add_full(logits, rows);
          return;
        }
        std::vector<int32_t> idx(static_cast<size_t>(rows * top_k));
        std::vector<float> lp(idx.size());
        for (int64_t r = 0; r < rows; ++r)
          top_k_log_probs(logits + r * vocab, vocab, top_k, idx.data() + r * top_k,
                          lp.data() + r * top_k);
        writer.add_top_k(idx.data(), lp.data(), rows);
      }, 7);
      writer.end_sequence();
    }
    writer.finish();
    return path;
  }

  nlohmann::json f_;
  std::vector<int32_t> tokens_;
  std::vector<TokenWindow> windows_;
  std::filesystem::path dir_;
};

TEST_F(EvalComparison, AgainstAReferenceModelMatchesNumpy) {
  TableModel model(f_["model"], f_["vocab"]);
  TableModel ref(f_["ref"], f_["vocab"], /*chunk=*/3);  // other chunk sizes than the model's
  auto rows = reference_from_model(ref, 4);
  const EvalResult r = evaluate(model, tokens_, windows_, rows.get());
  ASSERT_TRUE(r.comparison.has_value());
  expect_matches(*r.comparison, f_["compare_full"], 1e-9);
  EXPECT_NEAR(r.perplexity(), f_["perplexity"]["perplexity"].get<double>(), 1e-9);
}

TEST_F(EvalComparison, AgainstAFullLogitCacheMatchesNumpy) {
  io::LogitCacheReader cache(write_cache(0));
  TableModel model(f_["model"], f_["vocab"]);
  auto rows = reference_from_cache(cache, 6);
  const EvalResult r = evaluate(model, tokens_, windows_, rows.get());
  expect_matches(*r.comparison, f_["compare_full"], 1e-9);
}

TEST_F(EvalComparison, AgainstATopKCacheMatchesNumpyWithTheTailTerm) {
  io::LogitCacheReader cache(write_cache(f_["top_k"]));
  TableModel model(f_["model"], f_["vocab"]);
  auto rows = reference_from_cache(cache, 6);
  const EvalResult r = evaluate(model, tokens_, windows_, rows.get());
  // f16 log-probs are reproduced exactly by the fixture; the rest is float64 arithmetic.
  expect_matches(*r.comparison, f_["compare_top_k"], 1e-9);
}

TEST_F(EvalComparison, IdenticalModelsHaveZeroDivergence) {
  TableModel model(f_["model"], f_["vocab"]);
  TableModel same(f_["model"], f_["vocab"]);
  auto rows = reference_from_model(same, 16);
  const auto r = *evaluate(model, tokens_, windows_, rows.get()).comparison;
  EXPECT_NEAR(r.kl_mean, 0.0, 1e-12);
  EXPECT_EQ(r.top1_agreement, 1.0);
  EXPECT_NEAR(r.rms_dp, 0.0, 1e-12);
  EXPECT_NEAR(r.ppl_ratio, 1.0, 1e-12);
}

TEST_F(EvalComparison, ReferenceWithAnotherVocabularyIsRefused) {
  TableModel model(f_["model"], f_["vocab"]);
  auto spec = f_["ref"];
  TableModel ref(spec, 7);  // reads only a 7-wide slice: the vocabulary size is what matters
  auto rows = reference_from_model(ref, 4);
  const std::string message =
      error_message_of([&] { evaluate(model, tokens_, windows_, rows.get()); });
  EXPECT_NE(message.find("vocabulary"), std::string::npos) << message;
}

TEST_F(EvalComparison, CacheForOtherTokensIsRefused) {
  io::LogitCacheReader cache(write_cache(0));
  TableModel model(f_["model"], f_["vocab"]);
  auto rows = reference_from_cache(cache, 6);
  auto other = tokens_;
  other[40] = (other[40] + 1) % 13;
  const std::string message =
      error_message_of([&] { evaluate(model, other, windows_, rows.get()); });
  EXPECT_NE(message.find("position 8"), std::string::npos) << message;
}

TEST_F(EvalComparison, CacheWithAnotherSeqLenIsRefused) {
  io::LogitCacheReader cache(write_cache(0));
  TableModel model(f_["model"], f_["vocab"]);
  auto rows = reference_from_cache(cache, 6);
  const auto windows = non_overlapping_windows(static_cast<int64_t>(tokens_.size()), 8);
  EXPECT_THROW(evaluate(model, tokens_, windows, rows.get()), Error);
}

TEST_F(EvalComparison, AFailingReferenceModelSurfacesItsError) {
  class Failing : public TableModel {
   public:
    using TableModel::TableModel;
    void score(std::span<const int32_t> t, const model::LogitsConsumer& c, int64_t n) override {
      if (calls++ == 2) throw_user_error("reference broke");
      TableModel::score(t, c, n);
      --calls;
    }
  };
  TableModel model(f_["model"], f_["vocab"]);
  Failing ref(f_["ref"], f_["vocab"]);
  auto rows = reference_from_model(ref, 4);
  EXPECT_THROW(evaluate(model, tokens_, windows_, rows.get()), Error);
}

}  // namespace
}  // namespace refinery::eval
