// PrefetchingTeacher (prefetching_teacher.hpp): one worker thread, a FIFO of forwards.
#include "distill/prefetching_teacher.hpp"

#include <algorithm>

namespace refinery::distill {

PrefetchingTeacher::PrefetchingTeacher(const std::filesystem::path& model_dir,
                                       std::shared_ptr<backend::Backend> teacher_backend)
    : model_(model::Transformer::load(model_dir, std::move(teacher_backend))) {
  worker_ = std::thread([this] { run(); });
}

PrefetchingTeacher::~PrefetchingTeacher() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  work_.notify_all();
  if (worker_.joinable()) worker_.join();
}

std::shared_ptr<PrefetchingTeacher::Job> PrefetchingTeacher::submit(
    std::span<const int32_t> tokens, int64_t sequences) {
  auto job = std::make_shared<Job>();
  job->tokens.assign(tokens.begin(), tokens.end());
  job->sequences = sequences;
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(job);
  }
  work_.notify_one();
  return job;
}

void PrefetchingTeacher::wait(const Job& job) {
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return job.done; });
  if (job.error) std::rethrow_exception(job.error);
}

void PrefetchingTeacher::prefetch(std::span<const int32_t> tokens, int64_t sequences) {
  prefetched_ = submit(tokens, sequences);
}

train::TeacherTargets PrefetchingTeacher::targets(std::span<const int32_t> tokens,
                                                  int64_t sequences, std::span<const int64_t>) {
  std::shared_ptr<Job> job;
  if (prefetched_ != nullptr && prefetched_->sequences == sequences &&
      std::equal(tokens.begin(), tokens.end(), prefetched_->tokens.begin(),
                 prefetched_->tokens.end())) {
    job = std::move(prefetched_);
  } else {
    job = submit(tokens, sequences);  // e.g. a held-out evaluation batch
  }
  wait(*job);
  current_ = job;  // the previous batch's hidden states are released here
  train::TeacherTargets t;
  t.teacher = model_.get();
  t.teacher_hidden = job->hidden;
  return t;
}

void PrefetchingTeacher::run() {
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock lock(mutex_);
      work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
    }
    Tensor hidden;
    std::exception_ptr error;
    try {
      model::KvCache cache = model_->make_cache(static_cast<int64_t>(job->tokens.size()));
      hidden = model_->forward_hidden_batch(job->tokens, job->sequences, cache);
      // Wait for the device: the student (another thread, another stream) reads it next.
      if (hidden.numel() > 0) model_->backend().download(hidden.slice(0, 1));
    } catch (...) {
      error = std::current_exception();
    }
    {
      std::lock_guard lock(mutex_);
      job->hidden = std::move(hidden);
      job->error = error;
      job->done = true;
    }
    done_.notify_all();
  }
}

}  // namespace refinery::distill
