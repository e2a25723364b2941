// `refine bench`: the DESIGN §6 JSON keys, and clear errors for lengths the model cannot take.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/run_refine.hpp"

namespace {

using refinery::test::run_refine;
const std::string kDemo = std::string(REFINERY_SOURCE_DIR) + "/models/demo-tiny-deepseek-v3";

TEST(BenchCli, ReportsPrefillDecodeAndPeakMemory) {
  const auto r = run_refine("bench " + kDemo + " --prefill-tokens 32 --decode-tokens 4 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prefill_tokens"], 32);
  EXPECT_EQ(j["decode_tokens"], 4);
  EXPECT_GT(j["prefill_tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["peak_memory_bytes"].get<int64_t>(), 1 << 20);  // at least the weights touched
  const auto text = run_refine("bench " + kDemo + " --prefill-tokens 8 --decode-tokens 2");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("tokens/s (batch 1)"), std::string::npos) << text.out;
}

TEST(BenchCli, LengthsBeyondTheModelAreUserErrors) {
  const auto r = run_refine("bench " + kDemo + " --prefill-tokens 100000 --decode-tokens 4");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("exceeds the model's max_position_embeddings"), std::string::npos) << r.err;
  const auto zero = run_refine("bench " + kDemo + " --decode-tokens 0");
  EXPECT_EQ(zero.exit_code, 1) << zero.err;
  const auto missing = run_refine("bench /no/such/model");
  EXPECT_EQ(missing.exit_code, 1) << missing.err;
}

}  // namespace
