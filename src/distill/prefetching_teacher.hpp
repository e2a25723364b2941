#pragma once
// An online teacher whose forward for the NEXT micro-batch runs on a worker thread with its own
// backend (on CUDA: its own stream, see CMakeLists.txt's per-thread default streams) while the
// student trains on the current one: the teacher's GEMMs fill the time the student spends in
// memory-bound work (the optimizer step, element-wise ops) instead of running after it.
//
// Same results as OnlineTeacher: the teacher's forward is the same code on a backend of the same
// kind; its hidden states [T, hidden] are handed over only after the worker has waited for them,
// and the student's backend makes the teacher logits from them chunk by chunk
// (TrainableModel uses the teacher's lm_head weight on its own backend). Memory: the teacher's
// activations of one forward in flight next to the student's, plus a second copy of the teacher's
// lm_head on the student's backend.
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "distill/teacher_source.hpp"

namespace refinery::distill {

class PrefetchingTeacher final : public TeacherSource {
 public:
  // `teacher_backend`: a backend for the teacher alone (used only by the worker thread from now on).
  PrefetchingTeacher(const std::filesystem::path& model_dir,
                     std::shared_ptr<backend::Backend> teacher_backend);
  ~PrefetchingTeacher() override;
  PrefetchingTeacher(const PrefetchingTeacher&) = delete;
  PrefetchingTeacher& operator=(const PrefetchingTeacher&) = delete;

  // The prefetched forward when `tokens` are the ones prefetch() was given last, else a forward
  // run now (on the worker, after whatever it is doing); waits for it. The hidden states stay
  // alive until the next call.
  train::TeacherTargets targets(std::span<const int32_t> tokens, int64_t sequences,
                                std::span<const int64_t> windows) override;
  // Starts the forward of the micro-batch that will be asked for next.
  void prefetch(std::span<const int32_t> tokens, int64_t sequences) override;
  int64_t vocab_size() const override { return model_->config().vocab_size; }

 private:
  struct Job {
    std::vector<int32_t> tokens;
    int64_t sequences = 0;
    Tensor hidden;  // [T, hidden] when done
    bool done = false;
    std::exception_ptr error;
  };
  std::shared_ptr<Job> submit(std::span<const int32_t> tokens, int64_t sequences);
  void wait(const Job& job);
  void run();  // the worker thread

  std::unique_ptr<model::Transformer> model_;
  std::shared_ptr<Job> prefetched_;  // the last prefetch, until targets() takes it
  std::shared_ptr<Job> current_;     // the job whose hidden states the student is using
  std::mutex mutex_;
  std::condition_variable work_;  // the worker waits for jobs
  std::condition_variable done_;  // targets() waits for a job to finish
  std::deque<std::shared_ptr<Job>> queue_;
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace refinery::distill
