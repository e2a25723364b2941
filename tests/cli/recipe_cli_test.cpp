// `refine recipe`: the real binary. Every shipped recipe validates and dry-runs; each kind of bad
// recipe is one clear error (exit 1) before anything runs; a tiny four-step recipe runs, writes its
// report, and --resume keeps finished steps and reruns only an unfinished one.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace {

using nlohmann::json;
using refinery::test::read_text_file;
using refinery::test::run_refine;
using refinery::test::RefineRun;
using refinery::test::ScratchDir;
namespace fs = std::filesystem;

const std::string kSource = REFINERY_SOURCE_DIR;
const std::string kDemo = kSource + "/models/demo-tiny-deepseek-v3";

// Two documents of seeded token ids below the demo model's vocabulary (tokens JSON).
std::string write_tokens(const ScratchDir& dir) {
  std::string s = "[";
  for (int doc = 0; doc < 2; ++doc) {
    s += doc ? ",[" : "[";
    for (int i = 0; i < 512; ++i) s += (i ? "," : "") + std::to_string((doc * 512 + i) * 7919 % 32000);
    s += "]";
  }
  return dir.write("tokens.json", s + "]");
}

// prune (2 of 3 layers) -> distill (3 steps, the pruned model from the original) -> RTN W8 -> eval.
json tiny_recipe() {
  return json::parse(R"({"name": "tiny", "model": ")" + kDemo + R"(",
    "steps": [
      {"name": "pruned", "verb": "prune", "options": {"model": "@input", "calib": "tokens.json",
       "calib-tokens": 256, "seq-len": 64, "layers": 2}},
      {"name": "student", "verb": "distill", "options": {"student": "@pruned", "teacher": "@input",
       "data": "tokens.json", "seq-len": 32, "batch": 2, "steps": 3, "eval-every": 1,
       "eval-windows": 1, "log-every": 1}},
      {"name": "w8", "verb": "quantize", "options": {"model": "@student", "method": "rtn",
       "bits": 8, "group-size": 32}},
      {"name": "check", "verb": "eval", "options": {"model": "@w8", "ref": "@student",
       "data": "tokens.json", "seq-len": 64}}],
    "report": {"data": "tokens.json", "seq-len": 64, "prefill-tokens": 8, "decode-tokens": 2}})");
}

RefineRun run_recipe(const ScratchDir& dir, const json& recipe, const std::string& extra = "") {
  const std::string file = dir.write("recipe.json", recipe.dump(2));
  return run_refine("recipe " + file + " --run-dir " + dir.file("run") + " " + extra);
}

void expect_user_error(const RefineRun& r, const std::string& needle) {
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST(RecipeCli, ShippedRecipesValidateAndDryRun) {
  for (const char* name : {"quickstart", "awq-w4g128", "minitron-prune-distill", "moe-to-dense-7b"}) {
    const auto r = run_refine("recipe " + kSource + "/recipes/" + name + ".json --dry-run");
    EXPECT_EQ(r.exit_code, 0) << name << ": " << r.err;
    EXPECT_NE(r.out.find(std::string("recipe ") + name + ": valid"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("memory:"), std::string::npos) << r.out;
  }
}

TEST(RecipeCli, DryRunPrintsTheCommandsAndRunsNothing) {
  ScratchDir dir;
  write_tokens(dir);
  const auto r = run_recipe(dir, tiny_recipe(), "--dry-run");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("refine prune " + kDemo + " --calib " + dir.file("tokens.json")),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("--student " + dir.file("run") + "/01-pruned/model --teacher " + kDemo),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("pruned: needs about"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

TEST(RecipeCli, BadRecipesAreOneClearErrorBeforeAnythingRuns) {
  ScratchDir dir;
  write_tokens(dir);
  json j = tiny_recipe();
  j["steps"][0]["options"]["expert"] = 4;
  expect_user_error(run_recipe(dir, j), "has no option \"expert\" (did you mean 'experts'?)");
  j = tiny_recipe();
  j["steps"][2]["options"]["bits"] = "four";  // the quantize parser's own value check
  expect_user_error(run_recipe(dir, j), "step 'w8': `refine quantize");
  j = tiny_recipe();
  dir.write("x.json", "{}");
  j["steps"][1]["options"]["student-config"] = "x.json";  // contradicts "student"
  expect_user_error(run_recipe(dir, j), "\"student\" and \"student-config\" exclude each other");
  j = tiny_recipe();
  j["steps"][0]["options"]["calib"] = "missing.jsonl";
  expect_user_error(run_recipe(dir, j), "calib " + dir.file("missing.jsonl") + " does not exist");
  j = tiny_recipe();
  j["model"] = dir.file("nowhere");
  expect_user_error(run_recipe(dir, j), "is not a model directory");
  j = tiny_recipe();
  j["steps"][1]["options"]["teacher"] = "@w8";
  expect_user_error(run_recipe(dir, j), "refers to '@w8', which is not an earlier step");
  // A truncated file.
  const std::string text = tiny_recipe().dump();
  dir.write("cut.json", text.substr(0, text.size() / 2));
  expect_user_error(run_refine("recipe " + dir.file("cut.json")), "is not valid JSON");
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

TEST(RecipeCli, WrongModelTypeOrTruncatedCheckpointIsOneSentence) {
  ScratchDir dir;
  write_tokens(dir);
  fs::copy(kDemo, dir.file("gpt2"), fs::copy_options::recursive);
  std::string config = read_text_file(dir.file("gpt2/config.json"));
  config.replace(config.find("\"deepseek_v3\""), 13, "\"gpt2\"");
  dir.write("gpt2/config.json", config);
  json j = tiny_recipe();
  j["model"] = dir.file("gpt2");
  expect_user_error(run_recipe(dir, j), "model type \"gpt2\" is not supported");
  fs::copy(kDemo, dir.file("cut"), fs::copy_options::recursive);
  fs::resize_file(dir.file("cut/model.safetensors"), fs::file_size(dir.file("cut/model.safetensors")) / 2);
  j["model"] = dir.file("cut");
  expect_user_error(run_recipe(dir, j), "truncated");
  EXPECT_FALSE(fs::exists(dir.file("run")));
}

TEST(RecipeCli, RunsWritesTheReportAndResumes) {
  ScratchDir dir;
  write_tokens(dir);
  const auto r = run_recipe(dir, tiny_recipe());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("| teacher | input | deepseek_v3 |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| w8 | quantize | deepseek_v3 |"), std::string::npos) << r.out;
  const fs::path run = dir.file("run");
  const json report = json::parse(read_text_file((run / "report.json").string()));
  ASSERT_EQ(report["artifacts"].size(), 4u);  // teacher, pruned, student, w8
  for (const auto& a : report["artifacts"]) {
    EXPECT_GT(a["params_total"].get<int64_t>(), 0);
    EXPECT_GT(a["bytes_on_disk"].get<int64_t>(), 0);
    EXPECT_GT(a["perplexity"].get<double>(), 1.0);
    EXPECT_GT(a["decode_tokens_per_s"].get<double>(), 0.0);
  }
  // The pruned model has fewer parameters and is compared with the teacher.
  EXPECT_LT(report["artifacts"][1]["params_total"], report["artifacts"][0]["params_total"]);
  EXPECT_GT(report["artifacts"][1]["kl_mean"].get<double>(), 0.0);
  const std::string html = read_text_file((run / "report.html").string());
  EXPECT_NE(html.find("<svg"), std::string::npos);  // the student's training curves
  EXPECT_TRUE(fs::exists(run / "04-check" / "eval.json"));
  EXPECT_TRUE(fs::exists(run / "02-student" / "model" / "train" / "metrics.jsonl"));

  // Running again without --resume refuses; with it, nothing is recomputed.
  expect_user_error(run_recipe(dir, tiny_recipe()), "pass --resume");
  const auto w8_time = fs::last_write_time(run / "03-w8" / "model" / "model.safetensors");
  fs::remove(run / "03-w8" / "step.json");  // as if the quantize step had been interrupted
  const auto resumed = run_recipe(dir, tiny_recipe(), "--resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("distill 'student': finished in an earlier run, kept"),
            std::string::npos)
      << resumed.err;
  EXPECT_NE(resumed.err.find("$ refine quantize"), std::string::npos) << resumed.err;
  EXPECT_EQ(resumed.err.find("$ refine distill"), std::string::npos) << resumed.err;
  EXPECT_TRUE(fs::exists(run / "03-w8" / "step.json"));
  EXPECT_GE(fs::last_write_time(run / "03-w8" / "model" / "model.safetensors"), w8_time);

  // An interrupted distill continues from its checkpoint, and what reads its output runs again.
  const auto student_time = fs::last_write_time(run / "02-student" / "model" / "model.safetensors");
  fs::remove(run / "02-student" / "step.json");
  const auto again = run_recipe(dir, tiny_recipe(), "--resume");
  ASSERT_EQ(again.exit_code, 0) << again.err;
  // The recipe's device is "auto": cpu here, cuda on a machine with a GPU.
  const std::string resumed_distill = "--out " + (run / "02-student" / "model").string() + " --device ";
  EXPECT_TRUE(again.err.find(resumed_distill + "cpu --resume") != std::string::npos ||
              again.err.find(resumed_distill + "cuda --resume") != std::string::npos)
      << again.err;
  EXPECT_NE(again.err.find("step 'w8' reads '@student', which ran again"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("$ refine eval"), std::string::npos) << again.err;
  EXPECT_EQ(again.err.find("$ refine prune"), std::string::npos) << again.err;
  EXPECT_GE(fs::last_write_time(run / "02-student" / "model" / "model.safetensors"), student_time);

  // A finished step may not change under --resume.
  json changed = tiny_recipe();
  changed["steps"][0]["options"]["layers"] = 1;
  expect_user_error(run_recipe(dir, changed, "--resume"), "finished in");
}

}  // namespace
