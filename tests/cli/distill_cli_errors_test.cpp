// `refine distill` with bad input: exit code 1, nothing on stdout, and one "error: ..." line that
// names the problem and the fix (DESIGN §6); a failed start leaves no output directory.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/io/logit_cache.hpp"
#include "tests/cli/distill_cli_support.hpp"

namespace refinery::distill_cli_test {
namespace {

class DistillCliErrors : public ::testing::Test {
 protected:
  void SetUp() override { data_ = valid_slice(dir_, 1); }
  OneOmpThread one_thread_;
  // A valid CE-only command line into `out`, to which a test adds or changes one thing.
  std::string ce_run(const std::string& out) const {
    return "distill --data " + data_ + " --tokenizer " + kTokenizer + " --out " + out +
           " --seq-len 32 --batch 2 --steps 1 --threads 1 --kd-weight 0 --ce-weight 1";
  }
  ScratchDir dir_;
  std::string data_;
};

TEST_F(DistillCliErrors, StudentAndStudentConfigBothOrNeither) {
  const std::string out = dir_.file("out");
  expect_user_error(ce_run(out) + " --student " + kTeacher + " --student-config " + kStudentConfig,
                    {"--student", "--student-config", "exactly one"});
  expect_user_error(ce_run(out), {"--student", "--student-config", "exactly one"});
  EXPECT_FALSE(fs::exists(out)) << "a failed start leaves no output directory";
}

TEST_F(DistillCliErrors, FullLogitsCacheAndIncompleteCache) {
  const std::string full = dir_.file("full.h5");
  run_ok("logits " + kTeacher + " --data " + data_ + " --top-k 0 --seq-len 16 --out " + full);
  expect_user_error("distill --student-config " + kStudentConfig + " --teacher-logits " + full +
                        " --out " + dir_.file("o1") + " --steps 1 --batch 2 --threads 1",
                    {full, "full-logits", "--top-k"});

  // An incomplete top-k cache: 1 of 3 planned sequences committed, never finished.
  const std::string partial = dir_.file("partial.h5");
  {
    io::LogitCacheInfo info;
    info.teacher_path = kTeacher;
    info.teacher_fingerprint = "test";
    info.top_k = 4;
    info.vocab_size = 8192;
    info.seq_len = 8;
    info.planned_sequences = 3;
    info.data_sha256 = "test";
    io::LogitCacheWriter writer(partial, info);
    const std::vector<int32_t> ids = {5, 6, 7, 8, 9, 10, 11, 12};
    std::vector<int32_t> top(8 * 4);
    std::vector<float> lp(8 * 4, -1.5f);
    for (size_t i = 0; i < top.size(); ++i) top[i] = static_cast<int32_t>(i % 4);
    writer.begin_sequence(ids);
    writer.add_top_k(top.data(), lp.data(), 8);
    writer.end_sequence();
    writer.drain();
  }  // no finish(): the file stays a partial cache
  expect_user_error("distill --student-config " + kStudentConfig + " --teacher-logits " + partial +
                        " --out " + dir_.file("o2") + " --steps 1 --batch 2 --threads 1",
                    {partial, "incomplete", "rerunning"});
}

// A priority-sampled cache is for forward KL at T = 1; eval cannot compare against it.
TEST_F(DistillCliErrors, PrioritySampledCacheRefusesOtherLossesAndEval) {
  const std::string cache = dir_.file("sampled.h5");
  expect_user_error("logits " + kTeacher + " --data " + data_ + " --top-k 0 --sample --seq-len 16 --out " +
                        dir_.file("x.h5"),
                    {"--sample", "--top-k"});
  run_ok("logits " + kTeacher + " --data " + data_ + " --top-k 4 --sample --seq-len 16 --out " + cache);
  const std::string distill = "distill --student-config " + kStudentConfig + " --teacher-logits " +
                              cache + " --steps 1 --batch 2 --threads 1 --out " + dir_.file("o");
  expect_user_error(distill + " --loss reverse_kl", {cache, "priority sample", "forward_kl"});
  expect_user_error(distill + " --temperature 2", {cache, "priority sample", "--temperature 1"});
  expect_user_error("eval " + kTeacher + " --ref-logits " + cache + " --data " + data_ +
                        " --seq-len 16",
                    {cache, "priority sample", "--ref"});
}

TEST_F(DistillCliErrors, TeacherWithAnotherVocabulary) {
  expect_user_error("distill --student-config " + kStudentConfig + " --teacher " + kDemo +
                        " --data " + data_ + " --tokenizer " + kTokenizer + " --out " +
                        dir_.file("o") + " --seq-len 32 --batch 2 --steps 1 --threads 1",
                    {"32000", "8192", "tokenizer"});
}

TEST_F(DistillCliErrors, DataTokenizedForALargerVocabulary) {
  // The demo model's 32000-token tokenizer gives ids past the student's 8192 embeddings.
  expect_user_error("distill --student-config " + kStudentConfig + " --data " + data_ +
                        " --tokenizer " + kDemo + " --out " + dir_.file("o") +
                        " --seq-len 32 --batch 2 --steps 1 --threads 1",
                    {"8192", "vocabulary", "--tokenizer"});
  // With a teacher of the student's vocabulary: the same message, before the teacher's forward.
  expect_user_error("distill --student-config " + kStudentConfig + " --teacher " + kTeacher +
                        " --data " + data_ + " --tokenizer " + kDemo + " --out " + dir_.file("o2") +
                        " --seq-len 32 --batch 2 --steps 1 --threads 1",
                    {"8192", "student's vocabulary", "--tokenizer"});
}

TEST_F(DistillCliErrors, DataTooShortForOneBatch) {
  const std::string tiny = dir_.write("tiny.json", "[[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]");
  expect_user_error("distill --student-config " + kStudentConfig + " --data " + tiny + " --out " +
                        dir_.file("o") + " --seq-len 4 --batch 2 --steps 1 --threads 1",
                    {"10 tokens", "--seq-len", "--batch"});
}

TEST_F(DistillCliErrors, TruncatedStudentWeights) {
  const fs::path student = dir_.path() / "student";
  fs::create_directories(student);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kTeacher + "/" + f, student / f);
  const auto size = fs::file_size(kTeacher + "/model.safetensors");
  fs::copy_file(kTeacher + "/model.safetensors", student / "model.safetensors");
  fs::resize_file(student / "model.safetensors", size / 2);
  expect_user_error(ce_run(dir_.file("o")) + " --student " + student.string(),
                    {"model.safetensors", "truncated"});
}

TEST_F(DistillCliErrors, OutHoldsAPreviousRunOrAnotherShapeOnResume) {
  const std::string out = dir_.file("out");
  run_ok(ce_run(out) + " --student-config " + kStudentConfig);
  expect_user_error(ce_run(out) + " --student-config " + kStudentConfig,
                    {out, "--resume", "another --out"});
  const std::string file = dir_.write("file.txt", "not a directory\n");
  expect_user_error(ce_run(file) + " --student-config " + kStudentConfig,
                    {file, "not a directory"});
  expect_user_error(ce_run(file) + " --student-config " + kStudentConfig + " --resume",
                    {file, "not a directory"});
  // A run killed before its first checkpoint leaves only its metrics log: a new run must not
  // append to it.
  const std::string early = dir_.file("early");
  fs::create_directories(fs::path(early) / "train");
  dir_.write("early/train/metrics.jsonl", R"({"step": 1, "loss": 9.0})"
                                          "\n");
  expect_user_error(ce_run(early) + " --student-config " + kStudentConfig,
                    {early, "--resume", "another --out"});
  // The same run resumed with other windows or batches would silently change the trajectory.
  std::string other = ce_run(out) + " --student-config " + kStudentConfig + " --resume";
  expect_user_error(other.replace(other.find("--seq-len 32"), 12, "--seq-len 16"),
                    {"--resume", "--seq-len 32 in the checkpoint but 16 now", "another --out"});
  other = ce_run(out) + " --student-config " + kStudentConfig + " --resume";
  expect_user_error(other.replace(other.find("--batch 2"), 9, "--batch 3"),
                    {"--resume", "--batch 2 in the checkpoint but 3 now"});
  // ... and so would another data order or learning rate.
  expect_user_error(ce_run(out) + " --student-config " + kStudentConfig + " --resume --seed 5",
                    {"--resume", "--seed 0 in the checkpoint but 5 now"});
  expect_user_error(ce_run(out) + " --student-config " + kStudentConfig + " --resume --lr 1e-3",
                    {"--resume", "--lr 0.0003 in the checkpoint but 0.001 now"});
  // The unchanged command resumes (here: a finished run, nothing left to do).
  run_ok(ce_run(out) + " --student-config " + kStudentConfig + " --resume");
}

TEST_F(DistillCliErrors, BadLossLearningRateAndMissingTeacher) {
  const std::string cfg = " --student-config " + kStudentConfig;
  expect_user_error(ce_run(dir_.file("o1")) + cfg + " --loss kl_forward",
                    {"--loss", "kl_forward", "forward_kl"});
  expect_user_error(ce_run(dir_.file("o2")) + cfg + " --lr -1e-3", {"--lr", "-0.001"});
  expect_user_error("distill" + cfg + " --data " + data_ + " --tokenizer " + kTokenizer +
                        " --out " + dir_.file("o3") +
                        " --seq-len 32 --batch 2 --steps 1 "
                        "--threads 1 --kd-weight 1",
                    {"--kd-weight", "--teacher", "--teacher-logits"});
  for (const char* o : {"o1", "o2", "o3"})
    EXPECT_FALSE(fs::exists(dir_.file(o))) << o << ": a failed start leaves no output directory";
}

TEST_F(DistillCliErrors, TeacherTailNeedsACacheAndAKnownName) {
  expect_user_error("distill --student-config " + kStudentConfig + " --teacher " + kTeacher +
                        " --data " + data_ + " --out " + dir_.file("o1") +
                        " --seq-len 32 --batch 2 --steps 1 --threads 1 --teacher-tail unigram",
                    {"--teacher-tail", "--teacher-logits"});
  expect_user_error(ce_run(dir_.file("o2")) + " --student-config " + kStudentConfig +
                        " --teacher-tail zipf",
                    {"--teacher-tail", "zipf", "unigram"});
}

}  // namespace
}  // namespace refinery::distill_cli_test
