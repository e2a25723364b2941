#include "engine/eval/reference_rows.hpp"

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/core/error.hpp"

namespace refinery::eval {
namespace {

// Runs the reference model over a window in a helper thread; its chunks wait in a queue of at
// most kQueuedChunks until the evaluation takes their rows.
class ModelRows final : public ReferenceRows {
 public:
  ModelRows(model::LanguageModel& model, int64_t chunk_rows)
      : model_(model), chunk_rows_(chunk_rows) {}
  ~ModelRows() override { abandon_window(); }

  int64_t vocab_size() const override { return model_.vocab_size(); }

  void begin_window(int64_t, std::span<const int32_t> tokens) override {
    abandon_window();
    queue_.clear();
    current_ = {};
    row_ = 0;
    done_ = cancel_ = false;
    error_ = nullptr;
    thread_ = std::thread([this, tokens] { produce(tokens); });
  }

  ReferenceRow next_row() override {
    const int64_t vocab = model_.vocab_size();
    if (row_ >= current_.rows) {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return !queue_.empty() || done_; });
      if (queue_.empty()) {
        if (error_) std::rethrow_exception(error_);
        throw_internal_error("the reference model delivered fewer rows than the window has");
      }
      current_ = std::move(queue_.front());
      queue_.pop_front();
      row_ = 0;
      changed_.notify_all();
    }
    ReferenceRow row;
    row.logits = current_.logits.data() + row_ * vocab;
    ++row_;
    return row;
  }

  void end_window() override {
    if (thread_.joinable()) thread_.join();
    if (error_) std::rethrow_exception(error_);
  }

  void abandon_window() noexcept override {
    {
      std::lock_guard lock(mutex_);
      cancel_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  static constexpr size_t kQueuedChunks = 2;
  struct Chunk {
    std::vector<float> logits;  // [rows, vocab]
    int64_t rows = 0;
  };
  struct Cancelled {};

  void produce(std::span<const int32_t> tokens) {
    try {
      const int64_t vocab = model_.vocab_size();
      model_.score(
          tokens,
          [&](int64_t, const float* logits, int64_t rows) {
            Chunk chunk{{logits, logits + rows * vocab}, rows};
            std::unique_lock lock(mutex_);
            changed_.wait(lock, [&] { return queue_.size() < kQueuedChunks || cancel_; });
            if (cancel_) throw Cancelled{};
            queue_.push_back(std::move(chunk));
            changed_.notify_all();
          },
          chunk_rows_);
    } catch (const Cancelled&) {
    } catch (...) {
      std::lock_guard lock(mutex_);
      error_ = std::current_exception();
    }
    std::lock_guard lock(mutex_);
    done_ = true;
    changed_.notify_all();
  }

  model::LanguageModel& model_;
  int64_t chunk_rows_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Chunk> queue_;
  Chunk current_;
  int64_t row_ = 0;
  bool done_ = false;
  bool cancel_ = false;
  std::exception_ptr error_;
};

class CacheRows final : public ReferenceRows {
 public:
  CacheRows(const io::LogitCacheReader& cache, int64_t chunk_rows)
      : cache_(cache), chunk_rows_(chunk_rows), k_(cache.info().top_k) {}

  int64_t vocab_size() const override { return cache_.info().vocab_size; }

  void begin_window(int64_t index, std::span<const int32_t> tokens) override {
    if (index >= cache_.sequences())
      throw_user_error(cache_.path(), " holds ", cache_.sequences(),
                       " sequences but the data yields more windows; it was made from other "
                       "data: pass the same --data and --seq-len, or remake the cache");
    const std::vector<int32_t> cached = cache_.sequence_tokens(index);
    if (cached.size() != tokens.size())
      throw_user_error(cache_.path(), ": sequence ", index, " has ", cached.size(),
                       " tokens but the evaluation window has ", tokens.size(),
                       "; the cache was made with another --seq-len or other data");
    for (size_t j = 0; j < cached.size(); ++j)
      if (cached[j] != tokens[j])
        throw_user_error(cache_.path(), ": sequence ", index, " position ", j, " holds token ",
                         cached[j], " but the data has ", tokens[j],
                         "; the cache was made from other data or with another tokenizer: "
                         "pass the same --data, or remake the cache");
    window_ = index;
    length_ = static_cast<int64_t>(tokens.size());
    next_ = 0;
    loaded_begin_ = loaded_rows_ = 0;
  }

  ReferenceRow next_row() override {
    if (next_ >= length_) throw_internal_error("reading past the end of a cached sequence");
    if (next_ >= loaded_begin_ + loaded_rows_) {
      loaded_begin_ = next_;
      loaded_rows_ = std::min(chunk_rows_, length_ - next_);
      if (k_ == 0) {
        logits_.resize(static_cast<size_t>(loaded_rows_ * vocab_size()));
        cache_.read_full(window_, loaded_begin_, loaded_rows_, logits_.data());
      } else {
        indices_.resize(static_cast<size_t>(loaded_rows_ * k_));
        log_probs_.resize(static_cast<size_t>(loaded_rows_ * k_));
        cache_.read_top_k(window_, loaded_begin_, loaded_rows_, indices_.data(),
                          log_probs_.data());
      }
    }
    const int64_t r = next_++ - loaded_begin_;
    ReferenceRow row;
    if (k_ == 0) {
      row.logits = logits_.data() + r * vocab_size();
    } else {
      row.indices = indices_.data() + r * k_;
      row.log_probs = log_probs_.data() + r * k_;
      row.k = k_;
    }
    return row;
  }

  void end_window() override {}
  void abandon_window() noexcept override {}

 private:
  const io::LogitCacheReader& cache_;
  int64_t chunk_rows_;
  int64_t k_;
  int64_t window_ = 0, length_ = 0, next_ = 0, loaded_begin_ = 0, loaded_rows_ = 0;
  std::vector<float> logits_;
  std::vector<int32_t> indices_;
  std::vector<float> log_probs_;
};

}  // namespace

std::unique_ptr<ReferenceRows> reference_from_model(model::LanguageModel& reference,
                                                    int64_t chunk_rows) {
  return std::make_unique<ModelRows>(reference, chunk_rows);
}

std::unique_ptr<ReferenceRows> reference_from_cache(const io::LogitCacheReader& cache,
                                                    int64_t chunk_rows) {
  // Agreement and KL need the teacher's most likely ids and true probabilities; a priority
  // sample holds estimates of other ids.
  if (cache.info().selection == io::kSelectionPriority)
    throw_user_error(cache.path(), " holds a priority sample (`refine logits --sample`), made for "
                     "distillation; to compare against a teacher use the teacher model (--ref) or a "
                     "cache made without --sample");
  return std::make_unique<CacheRows>(cache, chunk_rows);
}

}  // namespace refinery::eval
