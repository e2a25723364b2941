// `refine quantize`: --help, the output directory it writes (AutoAWQ config, refinery.json,
// tokenizer files, inspect's view of it) and one-sentence user errors with exit code 1.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery {
namespace {

namespace fs = std::filesystem;
using test::run_refine;

const std::string kSource = REFINERY_SOURCE_DIR;
const std::string kDemo = kSource + "/models/demo-tiny-deepseek-v3";

nlohmann::json read_json(const fs::path& p) {
  return nlohmann::json::parse(test::read_text_file(p.string()));
}

// A user error: exit 1, nothing on stdout, one line on stderr naming `needle`.
void expect_one_sentence_error(const test::RefineRun& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_LE(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

TEST(QuantizeCli, HelpHasAnExample) {
  const auto r = run_refine("quantize --help");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("Example"), std::string::npos);
  for (const char* opt : {"--method", "--bits", "--group-size", "--symmetric", "--calib", "--force"})
    EXPECT_NE(r.out.find(opt), std::string::npos) << opt;
}

TEST(QuantizeCli, RtnWritesAnAutoAwqDirectory) {
  test::ScratchDir dir;
  const fs::path out = dir.file("w4");
  const auto r = run_refine("quantize " + kDemo + " --out " + out.string() +
                            " --method rtn --bits 4 --group-size 128 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto summary = nlohmann::json::parse(r.out);
  EXPECT_LT(summary["bytes_after"].get<int64_t>(), summary["bytes_before"].get<int64_t>());
  // Reported on stderr: every linear left unquantized (expert down_proj: in 48).
  EXPECT_NE(r.err.find("model.layers.1.mlp.experts.0.down_proj"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("stays unquantized"), std::string::npos);
  const auto config = read_json(out / "config.json");
  const auto& q = config["quantization_config"];
  EXPECT_EQ(q["quant_method"], "awq");
  EXPECT_EQ(q["bits"], 4);
  EXPECT_EQ(q["group_size"], 128);
  EXPECT_EQ(q["zero_point"], true);
  EXPECT_EQ(q["version"], "gemm");
  const auto skip = q["modules_to_not_convert"].get<std::vector<std::string>>();
  for (const char* m : {"model.layers.1.mlp.gate", "model.layers.2.mlp.experts.7.down_proj",
                        "model.layers.0.self_attn.q_b_proj"})
    EXPECT_NE(std::find(skip.begin(), skip.end(), m), skip.end()) << m;
  for (const std::string& m : skip) EXPECT_EQ(m.find("q_a_proj"), std::string::npos) << m;
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "refinery.json", "model.safetensors"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  const auto prov = read_json(out / "refinery.json");
  EXPECT_EQ(prov["pass"], "quantize");
  EXPECT_EQ(prov["options"]["method"], "rtn");
  EXPECT_TRUE(prov.contains("metrics"));
  // inspect: logical parameters equal the dense model's; bytes are those on disk (smaller).
  const auto a = run_refine("inspect " + kDemo + " --json"), b = run_refine("inspect " + out.string() + " --json");
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const auto ja = nlohmann::json::parse(a.out), jb = nlohmann::json::parse(b.out);
  EXPECT_EQ(jb["params_total"], ja["params_total"]);
  EXPECT_EQ(jb["quantization"], "awq");
  EXPECT_LT(jb["bytes"].get<int64_t>(), ja["bytes"].get<int64_t>());
  // And the engine runs it.
  const auto run = run_refine("run " + out.string() + " --prompt hello --max-new 3");
  EXPECT_EQ(run.exit_code, 0) << run.err;
}

TEST(QuantizeCli, AwqWritesAModelThatEvalReads) {
  test::ScratchDir dir;
  const fs::path out = dir.path() / "awq";
  const std::string calib = kSource + "/data/sample/valid-sample.jsonl";
  const auto r = run_refine("quantize " + kDemo + " --out " + out.string() + " --method awq --bits 4 "
                            "--group-size 32 --calib " + calib + " --calib-tokens 256 --seq-len 64 "
                            "--threads 1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto summary = nlohmann::json::parse(r.out);
  EXPECT_GT(summary["quantized_linears"].get<int>(), 0);
  const auto prov = read_json(out / "refinery.json");
  EXPECT_EQ(prov["options"]["method"], "awq");
  ASSERT_TRUE(prov.contains("awq")) << prov.dump();
  EXPECT_FALSE(prov["awq"]["groups"].empty());
  for (const auto& g : prov["awq"]["groups"])
    EXPECT_LE(g["loss_awq"].get<double>(), g["loss_rtn"].get<double>()) << g.dump();
  std::string text;
  for (int i = 0; i < 20; ++i) text += "def f(x):\n    return x * " + std::to_string(i) + "\n";
  const std::string held_out = dir.write("held_out.txt", text);
  const auto e = run_refine("eval " + out.string() + " --ref " + kDemo + " --data " + held_out +
                            " --seq-len 64 --json");
  ASSERT_EQ(e.exit_code, 0) << e.err;
  EXPECT_GT(nlohmann::json::parse(e.out)["kl_mean"].get<double>(), 0.0);
}

TEST(QuantizeCli, BadInputsAreOneSentenceUserErrors) {
  test::ScratchDir dir;
  const std::string out = " --out " + dir.file("o");
  expect_one_sentence_error(run_refine("quantize " + kSource + "/no/such/model" + out), "no/such/model");
  expect_one_sentence_error(run_refine("quantize " + kSource + "/tests" + out), "config.json");
  expect_one_sentence_error(run_refine("quantize " + kDemo + out + " --bits 5"), "--bits 5");
  expect_one_sentence_error(run_refine("quantize " + kDemo + out + " --group-size 48"), "--group-size 48");
  expect_one_sentence_error(run_refine("quantize " + kDemo + out + " --method gptq"), "--method gptq");
  expect_one_sentence_error(run_refine("quantize " + kDemo + out + " --method awq"), "--calib");
  expect_one_sentence_error(
      run_refine("quantize " + kDemo + out + " --method awq --calib " + dir.file("no-such.txt")),
      "no-such.txt");
  expect_one_sentence_error(
      run_refine("quantize " + kSource + "/tests/fixtures/models/deepseek_v3_fp8" + out),
      "already quantized");
  // An existing non-empty --out is refused, and kept, unless --force.
  const fs::path busy = dir.file("busy");
  fs::create_directories(busy);
  std::ofstream(busy / "notes.txt") << "mine\n";
  expect_one_sentence_error(run_refine("quantize " + kDemo + " --out " + busy.string()), "--force");
  EXPECT_TRUE(fs::exists(busy / "notes.txt"));
  const auto forced = run_refine("quantize " + kDemo + " --out " + busy.string() + " --force");
  EXPECT_EQ(forced.exit_code, 0) << forced.err;
  EXPECT_TRUE(fs::exists(busy / "config.json"));
  // Quantizing a quantized model is refused.
  expect_one_sentence_error(run_refine("quantize " + busy.string() + out), "already quantized");
  // --out inside the model is refused.
  expect_one_sentence_error(run_refine("quantize " + kDemo + " --out " + kDemo + "/q"), "overlaps");
  EXPECT_FALSE(fs::exists(kDemo + "/q"));
}

}  // namespace
}  // namespace refinery
