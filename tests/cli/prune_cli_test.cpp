// `refine prune`: the real binary on fixture models — scores only, a pruned model with provenance,
// a plan re-applied from refinery.json, heads / KV heads / hidden channels, and one clear user
// error (exit 1) per bad option.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace {

using nlohmann::json;
using refinery::test::run_refine;
using refinery::test::RefineRun;
using refinery::test::ScratchDir;
namespace fs = std::filesystem;

const std::string kSource = REFINERY_SOURCE_DIR;
const std::string kMixtral = kSource + "/tests/fixtures/models/mixtral_8e_top2";
const std::string kLlama = kSource + "/tests/fixtures/models/llama_gqa_llama3";
const std::string kDemo = kSource + "/models/demo-tiny-deepseek-v3";

// A tokens-JSON calibration file of `n` ids below `vocab`.
std::string tokens_file(const ScratchDir& dir, int n, int vocab) {
  std::string s = "[[";
  for (int i = 0; i < n; ++i) {
    if (i > 0) s += ',';
    s += std::to_string((i * 7919 + 13) % vocab);
  }
  return dir.write("calib.json", s + "]]");
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

TEST(PruneCli, HelpHasAnExample) {
  const RefineRun r = run_refine("prune --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("refine prune teacher/ --calib"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--heads 24 --kv-heads 6 --hidden 3072"), std::string::npos) << r.out;
  for (const char* option : {"--heads", "--kv-heads", "--hidden"})
    EXPECT_NE(r.out.find(option), std::string::npos) << option;
}

// Heads, KV groups and hidden channels from a calibration pass on llama (4 heads, 2 KV groups,
// hidden 64): the config, the recorded plan and options, and a model the engine runs.
TEST(PruneCli, PrunesHeadsKvHeadsAndHidden) {
  ScratchDir d;
  const std::string calib = tokens_file(d, 32, 256);
  const std::string out = d.file("narrow");
  const RefineRun r = run_refine("prune " + kLlama + " --calib " + calib + " --out " + out +
                                 " --heads 2 --kv-heads 1 --hidden 48 --seq-len 16 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json config = read_json(out + "/config.json");
  EXPECT_EQ(config["num_attention_heads"], 2);
  EXPECT_EQ(config["num_key_value_heads"], 1);
  EXPECT_EQ(config["hidden_size"], 48);
  EXPECT_EQ(config["head_dim"], 16);
  const json prov = read_json(out + "/refinery.json");
  EXPECT_EQ(prov["options"]["heads"], 2);
  EXPECT_EQ(prov["options"]["kv_heads"], 1);
  EXPECT_EQ(prov["options"]["hidden"], 48);
  EXPECT_EQ(prov["plan"]["hidden_channels"].size(), 48u);
  for (const json& l : prov["plan"]["layers"]) EXPECT_EQ(l["kv_heads"].size(), 1u);
  const RefineRun eval = run_refine("eval " + out + " --data " + calib + " --seq-len 16 --json");
  EXPECT_EQ(eval.exit_code, 0) << eval.err;
  // --heads alone keeps one head of each of the 2 groups.
  const RefineRun heads = run_refine("prune " + kLlama + " --calib " + calib + " --out " + d.file("h") +
                                     " --heads 2 --seq-len 16");
  ASSERT_EQ(heads.exit_code, 0) << heads.err;
  const json hc = read_json(d.file("h") + "/config.json");
  EXPECT_EQ(hc["num_attention_heads"], 2);
  EXPECT_EQ(hc["num_key_value_heads"], 2);
  EXPECT_EQ(hc["hidden_size"], 64);
}

TEST(PruneCli, ReportOnlyWritesScores) {
  ScratchDir d;
  const std::string calib = tokens_file(d, 40, 32000);
  const RefineRun r = run_refine("prune " + kDemo + " --calib " + calib + " --report " + d.file("s.json") +
                                 " --seq-len 20 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json s = read_json(d.file("s.json"));
  EXPECT_EQ(s["format"], "refinery.importance.v1");
  EXPECT_EQ(s["tokens"], 40);
  int64_t routed = 0;
  for (int64_t x : s["layers"][1]["experts"]["routed_tokens"]) routed += x;
  EXPECT_EQ(routed, 2 * 40);  // top-2
  EXPECT_EQ(json::parse(r.out)["report"], d.file("s.json"));
}

TEST(PruneCli, PrunesExpertsLayersAndChannelsWithProvenance) {
  ScratchDir d;
  const std::string calib = tokens_file(d, 32, 300);
  const std::string out = d.file("pruned");
  const RefineRun r = run_refine("prune " + kMixtral + " --calib " + calib + " --out " + out +
                                 " --experts 4 --expert-metric gate_norm --ffn-ratio 0.5 --layers 1 --seq-len 16 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json summary = json::parse(r.out);
  EXPECT_LT(summary["parameters_after"].get<int64_t>(), summary["parameters_before"].get<int64_t>());
  const json config = read_json(out + "/config.json");
  EXPECT_EQ(config["num_local_experts"], 4);
  EXPECT_EQ(config["intermediate_size"], 28);  // round(0.5 x 56)
  EXPECT_EQ(config["num_hidden_layers"], 1);
  const json prov = read_json(out + "/refinery.json");
  EXPECT_EQ(prov["pass"], "prune");
  EXPECT_EQ(prov["parent"], kMixtral);
  EXPECT_EQ(prov["options"]["experts"], 4);
  EXPECT_EQ(prov["options"]["expert_metric"], "gate_norm");
  EXPECT_EQ(prov["calibration"]["tokens"], 32);
  ASSERT_EQ(prov["scores_summary"]["layers"].size(), 2u);
  // The recorded plan, applied again, gives the same model (same config, same sizes).
  const std::string plan = d.write("plan.json", prov["plan"].dump());
  const RefineRun again = run_refine("prune " + kMixtral + " --plan " + plan + " --out " + d.file("again") + " --json");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(read_json(d.file("again") + "/config.json"), config);
  EXPECT_EQ(fs::file_size(d.file("again") + "/model.safetensors"), fs::file_size(out + "/model.safetensors"));
  // The output is a model the engine runs.
  const RefineRun eval = run_refine("eval " + out + " --data " + calib + " --seq-len 16 --json");
  EXPECT_EQ(eval.exit_code, 0) << eval.err;
}

TEST(PruneCli, RandomExpertsNeedNoCalibration) {
  ScratchDir d;
  const RefineRun r = run_refine("prune " + kMixtral + " --out " + d.file("o") + " --experts 3 --expert-metric random --seed 4");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(read_json(d.file("o") + "/config.json")["num_local_experts"], 3);
}

TEST(PruneCli, ExactExpertSubsetAndToDense) {
  ScratchDir d;
  const std::string calib = tokens_file(d, 64, 300);
  // mixtral_8e_top2: C(8, 4) = 70 subsets per layer.
  const RefineRun exact = run_refine("prune " + kMixtral + " --calib " + calib + " --out " + d.file("x") +
                                     " --experts 4 --expert-metric exact --seq-len 16");
  ASSERT_EQ(exact.exit_code, 0) << exact.err;
  EXPECT_EQ(read_json(d.file("x") + "/config.json")["num_local_experts"], 4);
  EXPECT_EQ(read_json(d.file("x") + "/refinery.json")["options"]["expert_metric"], "exact");

  const RefineRun dense = run_refine("prune " + kMixtral + " --calib " + calib + " --out " + d.file("dense") +
                                     " --to-dense 2 --expert-metric gate_norm --seq-len 16 --json");
  ASSERT_EQ(dense.exit_code, 0) << dense.err;
  const json summary = json::parse(dense.out);
  EXPECT_EQ(summary["model_type"], "mistral");
  const json config = read_json(d.file("dense") + "/config.json");
  EXPECT_EQ(config["model_type"], "mistral");
  EXPECT_EQ(config["intermediate_size"], 2 * read_json(kMixtral + "/config.json")["intermediate_size"].get<int>());
  EXPECT_EQ(read_json(d.file("dense") + "/refinery.json")["pass"], "to_dense");
  const RefineRun eval = run_refine("eval " + d.file("dense") + " --ref " + kMixtral + " --data " + calib +
                                    " --seq-len 16 --json");
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  EXPECT_GT(json::parse(eval.out)["top1_agreement"].get<double>(), 0.0);
}

struct BadCase {
  std::string args;
  std::string message;
};

TEST(PruneCli, BadOptionsAreUserErrors) {
  ScratchDir d;
  const std::string calib = tokens_file(d, 16, 300);
  fs::create_directories(d.file("full"));
  d.write("full/x.txt", "x");
  const std::string m = kMixtral + " --calib " + calib;
  const std::string l = kLlama + " --calib " + calib;
  const std::string plan = d.write("plan.json", R"({"format": "refinery.prune_plan.v1", "layers": [{"source": 0}]})");
  const BadCase cases[] = {
      {m + " --out " + d.file("a") + " --experts 9", "exceeds the 8 routed experts"},
      {m + " --out " + d.file("a") + " --experts 1", "valid values: 2, 3"},
      {m + " --out " + d.file("a") + " --ffn-ratio 0", "outside (0, 1]"},
      {m + " --out " + d.file("a") + " --ffn-ratio 1.5", "outside (0, 1]"},
      {m + " --out " + d.file("a") + " --layers 3", "keep between 1 and 2"},
      {kLlama + " --calib " + calib + " --out " + d.file("a") + " --experts 2", "dense"},
      {m + " --out " + d.file("full") + " --experts 4", "--force"},
      {m + " --out " + d.file("a"), "nothing to prune"},
      {kMixtral + " --experts 4", "nothing to do"},
      {kMixtral + " --out " + d.file("a") + " --experts 4", "give --calib"},
      {m + " --out " + d.file("a") + " --experts 4 --expert-metric best", "expected frequency, gate_norm or random"},
      {d.file("nowhere") + " --calib " + calib + " --out " + d.file("a") + " --experts 4", "not a model directory"},
      // llama_gqa_llama3: 4 heads in 2 KV groups, hidden 64.
      {l + " --out " + d.file("a") + " --heads 3", "valid values: 2, 4"},
      {l + " --out " + d.file("a") + " --heads 5", "keep between 1 and 4"},
      {l + " --out " + d.file("a") + " --heads 0", "keep between 1 and 4"},
      {l + " --out " + d.file("a") + " --heads 4 --kv-heads 1", "valid values with --kv-heads 1: 1, 2"},
      {l + " --out " + d.file("a") + " --kv-heads 3", "keep between 1 and 2"},
      {l + " --out " + d.file("a") + " --hidden 65", "keep between 1 and 64"},
      {l + " --out " + d.file("a") + " --hidden 0", "keep between 1 and 64"},
      {l + " --out " + d.file("a") + " --heads 2 --hidden 47", "multiple of num_attention_heads"},
      {kDemo + " --calib " + calib + " --out " + d.file("a") + " --kv-heads 2", "no KV groups"},
      {kLlama + " --plan " + plan + " --out " + d.file("a") + " --heads 2", "drop --experts"},
      {m + " --out " + d.file("a") + " --expert-metric exact", "give --experts"},
      {l + " --out " + d.file("a") + " --to-dense 2", "is a dense model"},
      {m + " --out " + d.file("a") + " --to-dense 2 --experts 4", "drop --experts"},
      {m + " --to-dense 2", "nothing to do"},
  };
  for (const BadCase& c : cases) {
    const RefineRun r = run_refine("prune " + c.args);
    EXPECT_EQ(r.exit_code, 1) << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\nstderr: " << r.err;
    EXPECT_FALSE(fs::exists(d.file("a"))) << c.args;
  }
  EXPECT_TRUE(fs::exists(d.file("full") + "/x.txt"));
}

}  // namespace
