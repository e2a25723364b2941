// End-to-end tests of the `refine` binary: exit codes, stdout/stderr separation, JSON keys that
// scripts rely on (DESIGN §6), and one-sentence errors for bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/io/token_dataset.hpp"
#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery {
namespace {

using TempDir = test::ScratchDir;

namespace fs = std::filesystem;

const std::string kSource = REFINERY_SOURCE_DIR;
const std::string kDemoModel = kSource + "/models/demo-tiny-deepseek-v3";

using test::run_refine;

TEST(RefineCli, HelpListsVerbsAndExitsZero) {
  const auto r = run_refine("--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* verb : {"inspect", "tokenize", "data", "bench", "recipe"}) EXPECT_NE(r.out.find(verb), std::string::npos);
}

TEST(RefineCli, EveryVerbHelpHasAnExample) {
  for (const char* verb : {"inspect", "tokenize", "data tokenize", "run", "logits", "eval", "distill",
                           "prune", "quantize", "bench", "recipe"}) {
    const auto r = run_refine(std::string(verb) + " --help");
    EXPECT_EQ(r.exit_code, 0) << verb;
    EXPECT_NE(r.out.find("Example"), std::string::npos) << verb;
  }
}

// Without OMP_WAIT_POLICY / GOMP_SPINCOUNT, refine sets OMP_WAIT_POLICY=PASSIVE and re-executes
// itself once (engine/core/openmp_wait.hpp): the re-executed run must behave as the first would
// (no exec loop, same output and exit code), and an explicit policy is kept (no re-exec).
TEST(RefineCli, ReexecutesOnceWithPassiveOpenMpWaiting) {
  const auto plain = run_refine("--version");
  ASSERT_EQ(plain.exit_code, 0);
  for (const char* env : {"env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT", "env OMP_WAIT_POLICY=ACTIVE"}) {
    const std::string command = std::string(env) + " " + REFINERY_REFINE_BINARY + " --version";
    FILE* pipe = ::popen(command.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    std::string out;
    char buffer[256];
    size_t n = 0;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
    const int status = ::pclose(pipe);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << env;
    EXPECT_EQ(out, plain.out) << env;
  }
  const auto bad = run_refine("frobnicate");  // the exit code survives the re-exec too
  EXPECT_EQ(bad.exit_code, 1);
}

TEST(RefineCli, UnknownVerbIsAUsageError) {
  const auto r = run_refine("frobnicate");
  EXPECT_EQ(r.exit_code, 1);
}

TEST(RefineCli, InspectJsonHasTheContractKeys) {
  const auto r = run_refine("inspect " + kDemoModel + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["model_type"], "deepseek_v3");
  EXPECT_EQ(j["layers"], 3);
  // transformers' num_parameters() gave 4,349,616 (models/make_demo_model.py); plus the two
  // e_score_correction_bias buffers of 8 that it does not count as parameters.
  EXPECT_EQ(j["params_total"], 4349616 + 2 * 8);
  // Active: everything but 6 of the 8 routed experts in each of the 2 MoE layers
  // (3 x 48 x 64 parameters per expert).
  EXPECT_EQ(j["params_active"], 4349632 - 2 * 6 * 3 * 48 * 64);
  EXPECT_EQ(j["bytes"], int64_t{4349632} * 2);  // all bf16
  EXPECT_EQ(j["bytes_by_dtype"]["BF16"], int64_t{4349632} * 2);
  EXPECT_EQ(j["kv_cache_bytes_per_token"], 3 * (32 + 8) * 2);
  EXPECT_TRUE(j["unrecognized_tensors"].empty());
}

TEST(RefineCli, InspectMissingDirectoryIsOneClearSentence) {
  const auto r = run_refine("inspect /no/such/model");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/no/such/model"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
}

TEST(RefineCli, InspectTruncatedCheckpointSaysTruncated) {
  TempDir dir;
  for (const char* name : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kDemoModel + "/" + name, dir.path() / name);
  const auto size = fs::file_size(kDemoModel + "/model.safetensors");
  fs::copy_file(kDemoModel + "/model.safetensors", dir.path() / "model.safetensors");
  fs::resize_file(dir.path() / "model.safetensors", size - 1000);
  const auto r = run_refine("inspect " + dir.path().string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("truncated"), std::string::npos) << r.err;
}

TEST(RefineCli, InspectUnknownModelTypeListsSupported) {
  TempDir dir;
  std::ofstream(dir.path() / "config.json") << R"({"model_type": "gpt2"})";
  const auto r = run_refine("inspect " + dir.path().string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("gpt2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("deepseek_v3"), std::string::npos) << r.err;
}

TEST(RefineCli, TokenizeMatchesHuggingFace) {
  // Ids from tokenizers 0.23: Tokenizer.from_file(...).encode("Hello world", add_special_tokens=...).
  auto r = run_refine("tokenize --tokenizer " + kDemoModel + " --text 'Hello world'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "22557 1526\n");
  r = run_refine("tokenize --tokenizer " + kDemoModel + " --text 'Hello world' --add-special --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["ids"], nlohmann::json::parse("[1, 22557, 1526]"));
  r = run_refine("tokenize --tokenizer " + kDemoModel + " --text '' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(nlohmann::json::parse(r.out)["ids"].empty());
}

TEST(RefineCli, TokenizeWithoutInputIsAUsageError) {
  const auto r = run_refine("tokenize --tokenizer " + kDemoModel);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--text"), std::string::npos) << r.err;
}

TEST(RefineCli, TokenizeInvalidUtf8WarnsAndSucceeds) {
  TempDir dir;
  std::ofstream(dir.path() / "bad.txt", std::ios::binary) << "ok \xff\xfe end";
  const auto r = run_refine("tokenize --tokenizer " + kDemoModel + " --file " +
                            (dir.path() / "bad.txt").string());
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("UTF-8"), std::string::npos) << r.err;
  EXPECT_FALSE(r.out.empty());
}

TEST(RefineCli, DataTokenizeWritesADatasetAndRefusesToOverwrite) {
  TempDir dir;
  const fs::path out = dir.path() / "tokens.h5";
  const std::string args = "data tokenize --tokenizer " + kDemoModel + " --in " + kSource +
                           "/data/sample/valid-sample.jsonl --out " + out.string();
  auto r = run_refine(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  io::TokenDataset dataset(out);
  EXPECT_EQ(dataset.n_docs(), 6u);
  // Counted with tokenizers 0.23, add_special_tokens=False, over the six documents.
  EXPECT_EQ(dataset.n_tokens(), 11016u);
  EXPECT_EQ(dataset.vocab_size(), 32000u);

  r = run_refine(args);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--force"), std::string::npos) << r.err;
  r = run_refine(args + " --force");
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(RefineCli, DataTokenizeMissingInputNamesIt) {
  TempDir dir;
  const auto r = run_refine("data tokenize --tokenizer " + kDemoModel + " --in /no/such.jsonl --out " +
                            (dir.path() / "x.h5").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("/no/such.jsonl"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir.path() / "x.h5"));
}

TEST(RefineCli, LogitsBatchMustBePositive) {
  TempDir dir;
  const std::string out = (dir.path() / "cache.h5").string();
  const auto r = run_refine("logits " + kSource + "/models/demo-tiny-deepseek-v3 --data " +
                            kSource + "/data/sample/valid-sample.jsonl --out " + out +
                            " --batch 0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--batch is 0"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace refinery
