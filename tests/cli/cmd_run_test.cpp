// End-to-end tests of `refine run` on the demo model: the continuation on stdout, stats on stderr,
// greedy determinism, and user errors with exit code 1.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/backend/cuda/device_info.hpp"
#include "tests/support/run_refine.hpp"

namespace refinery {
namespace {

// `refine run ARGS`.
test::RefineRun run(const std::string& args) { return test::run_refine("run " + args); }

const std::string kDemo = std::string(REFINERY_SOURCE_DIR) + "/models/demo-tiny-deepseek-v3";

TEST(RefineRun, GreedyContinuationIsDeterministicWithStatsOnStderr) {
  const auto a = run(kDemo + " --prompt 'The capital of France is' --max-new 8");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  EXPECT_FALSE(a.out.empty());
  EXPECT_NE(a.err.find("prefill: "), std::string::npos) << a.err;
  EXPECT_NE(a.err.find("tokens/s"), std::string::npos) << a.err;
  EXPECT_EQ(a.out.find("prefill"), std::string::npos);
  EXPECT_EQ(run(kDemo + " --prompt 'The capital of France is' --max-new 8").out, a.out);
  const auto s1 =
      run(kDemo + " --prompt 'Once' --max-new 8 --temperature 0.9 --top-p 0.95 --seed 3");
  const auto s2 =
      run(kDemo + " --prompt 'Once' --max-new 8 --temperature 0.9 --top-p 0.95 --seed 3");
  ASSERT_EQ(s1.exit_code, 0) << s1.err;
  EXPECT_EQ(s1.out, s2.out);
}

TEST(RefineRun, UserErrorsExitOne) {
  if (cuda::list_devices().empty()) {  // without a GPU, --device cuda is a user error
    const auto cuda = run(kDemo + " --prompt hi --device cuda");
    EXPECT_EQ(cuda.exit_code, 1);
    EXPECT_NE(cuda.err.find("--device cpu"), std::string::npos) << cuda.err;
  }
  const auto bad_device = run(kDemo + " --prompt hi --device tpu");
  EXPECT_EQ(bad_device.exit_code, 1);
  const auto missing = run("/nonexistent/model --prompt hi");
  EXPECT_EQ(missing.exit_code, 1) << missing.err;
  const auto help = run("--help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("Example"), std::string::npos);
}

}  // namespace
}  // namespace refinery
