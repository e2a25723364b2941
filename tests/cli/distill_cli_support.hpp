#pragma once
// Shared by the `refine distill` end-to-end tests (distill_cli_test.cpp,
// distill_cli_errors_test.cpp): the model, data and tokenizer paths, a slice of the sample data,
// metrics-log readers and one-thread runs of the binary.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::distill_cli_test {

namespace fs = std::filesystem;
using nlohmann::json;
using test::RefineRun;
using test::run_refine;
using test::ScratchDir;

inline const std::string kSource = REFINERY_SOURCE_DIR;
inline const std::string kStudentConfig = kSource + "/models/configs/student-dense-quarter.json";
inline const std::string kTeacher = kSource + "/models/refinery-teacher-moe";
inline const std::string kTokenizer = kSource + "/data/tokenizers/refinery-8k";
inline const std::string kDemo = kSource + "/models/demo-tiny-deepseek-v3";  // vocabulary 32000
inline const std::string kValid = kSource + "/data/sample/valid-200k.jsonl";

inline std::string join(const std::vector<std::string>& args) {
  std::string s;
  for (const auto& a : args) s += (s.empty() ? "" : " ") + a;
  return s;
}

// The first `lines` documents of valid-200k.jsonl (line 1: 1215 bytes, line 2: 5512 bytes).
inline std::string valid_slice(const ScratchDir& dir, int lines) {
  std::ifstream in(kValid);
  std::string text, line;
  for (int i = 0; i < lines && std::getline(in, line); ++i) text += line + "\n";
  return dir.write("slice" + std::to_string(lines) + ".jsonl", text);
}

// Every parseable line of a metrics log (a torn last line of a killed run is skipped).
inline std::vector<json> read_metrics(const fs::path& path) {
  std::vector<json> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    try {
      lines.push_back(json::parse(line));
    } catch (const json::exception&) {
    }
  }
  return lines;
}

// The metrics without the wall-clock rate: what must be identical between runs.
inline std::vector<json> deterministic(std::vector<json> lines) {
  for (auto& l : lines) l.erase("tokens_per_s");
  return lines;
}

inline int64_t last_step(const fs::path& metrics) {
  int64_t step = 0;
  for (const auto& l : read_metrics(metrics)) step = std::max(step, l.value("step", int64_t{0}));
  return step;
}

// OMP_NUM_THREADS=1 for every refine started while it lives (`refine logits` and `refine eval`
// have no --threads option): on a small shared machine a full OpenMP team per process is 30x
// slower than one thread.
class OneOmpThread {
 public:
  OneOmpThread() {
    if (const char* v = std::getenv("OMP_NUM_THREADS")) old_ = v, had_ = true;
    ::setenv("OMP_NUM_THREADS", "1", 1);
  }
  ~OneOmpThread() {
    if (had_) {
      ::setenv("OMP_NUM_THREADS", old_.c_str(), 1);
    } else {
      ::unsetenv("OMP_NUM_THREADS");
    }
  }
  OneOmpThread(const OneOmpThread&) = delete;
  OneOmpThread& operator=(const OneOmpThread&) = delete;

 private:
  std::string old_;
  bool had_ = false;
};

inline RefineRun run_ok(const std::string& args) {
  RefineRun r = run_refine(args);
  EXPECT_EQ(r.exit_code, 0) << args << "\nstderr:\n" << r.err;
  return r;
}

// Runs a command that must fail with exit code 1, print nothing on stdout and one "error: ..."
// line on stderr that contains every fragment.
inline void expect_user_error(const std::string& args, const std::vector<std::string>& fragments) {
  const RefineRun r = run_refine(args);
  EXPECT_EQ(r.exit_code, 1) << args << "\nstderr:\n" << r.err;
  EXPECT_TRUE(r.out.empty()) << args << "\nstdout:\n" << r.out;
  const size_t at = r.err.rfind("error: ");
  ASSERT_NE(at, std::string::npos) << args << "\nstderr:\n" << r.err;
  const std::string message = r.err.substr(at);
  EXPECT_EQ(std::count(message.begin(), message.end(), '\n'), 1) << message;
  for (const auto& f : fragments)
    EXPECT_NE(message.find(f), std::string::npos) << "'" << f << "' missing from: " << message;
}

}  // namespace refinery::distill_cli_test
