// `refine eval` / `refine logits` command-line behaviour that needs no model: help with an
// example, and refusals that come before any model is loaded (exit 1, one clear sentence).
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/support/run_refine.hpp"

namespace {

struct RefineResult {
  int code;
  std::string output;  // stdout and stderr together
};

RefineResult run_refine(const std::string& args) {
  const refinery::test::RefineRun r = refinery::test::run_refine(args);
  return {r.exit_code, r.out + r.err};
}

TEST(EvalCli, HelpHasAnExample) {
  for (const char* verb : {"eval", "logits"}) {
    const RefineResult r = run_refine(std::string(verb) + " --help");
    EXPECT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("Example"), std::string::npos) << r.output;
  }
}

TEST(EvalCli, RefusalsBeforeTheModelLoads) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("refinery_eval_cli_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "junk.h5") << "not hdf5";
  std::ofstream(dir / "x.txt") << "some text";
  const std::string junk = (dir / "junk.h5").string();
  const std::string data = (dir / "x.txt").string();
  struct Case {
    std::string args, needle;
  };
  const Case cases[] = {
      {"eval " + dir.string(), "nothing to evaluate"},
      {"eval " + dir.string() + " --data x.txt --ref-logits " + junk + " --stride 4", "--stride"},
      {"eval " + dir.string() + " --data " + data + " --ref-logits " + junk, "delete it"},
      {"eval " + dir.string() + " --data " + data + " --ref-logits " + (dir / "none.h5").string(),
       "does not exist"},
      {"eval " + dir.string() + " --data " + (dir / "none.txt").string(), "does not exist"},
      {"eval " + dir.string() + " --data x.txt --ref a --ref-logits b", "excludes"},
      {"logits " + dir.string() + " --data x.txt --out " + junk + " --top-k -3", "--top-k"},
  };
  for (const auto& c : cases) {
    const RefineResult r = run_refine(c.args);
    EXPECT_EQ(r.code, 1) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
