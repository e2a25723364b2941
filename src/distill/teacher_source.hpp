#pragma once
// Where the student's soft targets come from (DESIGN §4): an online teacher (its forward in this
// process, on the training device, so soft logits never leave the GPU) or an offline top-k cache
// written by `refine logits` (io::LogitCacheReader).
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/io/logit_cache.hpp"
#include "engine/model/transformer.hpp"
#include "engine/train/trainable_model.hpp"

namespace refinery::distill {

class TeacherSource {
 public:
  virtual ~TeacherSource() = default;
  // The targets of a micro-batch: `tokens` = `sequences` windows, whose stream window indices (of
  // the DataLoader over the same token stream) are `windows`. The result stays valid until the
  // next call.
  virtual train::TeacherTargets targets(std::span<const int32_t> tokens, int64_t sequences,
                                        std::span<const int64_t> windows) = 0;
  // A hint: these tokens will be asked for next (PrefetchingTeacher starts their forward now).
  virtual void prefetch(std::span<const int32_t> /*tokens*/, int64_t /*sequences*/) {}
  virtual int64_t vocab_size() const = 0;
};

// The teacher model run forward on the student's backend.
class OnlineTeacher final : public TeacherSource {
 public:
  OnlineTeacher(const std::filesystem::path& model_dir, std::shared_ptr<backend::Backend> backend);
  train::TeacherTargets targets(std::span<const int32_t> tokens, int64_t sequences,
                                std::span<const int64_t> windows) override;
  int64_t vocab_size() const override { return model_->config().vocab_size; }
  model::Transformer& model() { return *model_; }

 private:
  std::unique_ptr<model::Transformer> model_;
  Tensor hidden_;
};

// Top-k rows of a logit cache; cache sequence s is stream window s (the cache was made over the
// same non-overlapping windows of its seq_len).
class CachedTeacher final : public TeacherSource {
 public:
  CachedTeacher(const std::filesystem::path& cache, std::shared_ptr<backend::Backend> backend);
  train::TeacherTargets targets(std::span<const int32_t> tokens, int64_t sequences,
                                std::span<const int64_t> windows) override;
  int64_t vocab_size() const override { return reader_.info().vocab_size; }
  int64_t seq_len() const { return reader_.info().seq_len; }
  // Every complete sequence's ids, concatenated: the token stream the student trains on.
  std::vector<int32_t> token_stream() const;
  // A priority-sampled cache (`refine logits --sample`): rows are estimates of the whole
  // distribution, renormalized to sum to 1 after reading (fp16 storage), so the loss's tail
  // bucket is empty; only forward KL at T = 1 is unbiased for them (cmd_distill checks).
  bool is_priority_sample() const { return reader_.info().selection == io::kSelectionPriority; }
  // Spread each row's tail mass over the uncached ids by this prior (f32 [vocab], a normalized
  // log-distribution; losses.hpp "tail prior") instead of the one tail bucket.
  void set_tail_prior(const std::vector<float>& log_prior);

 private:
  io::LogitCacheReader reader_;
  std::shared_ptr<backend::Backend> backend_;
  Tensor tail_log_prior_;  // on the backend's device; undefined: the tail bucket
};

// How a top-k cache's tail mass is handled (`refine distill --teacher-tail`).
enum class TeacherTail { kBucket, kUnigram, kUniform };
// "bucket", "unigram", "uniform"; a user error listing them for anything else.
TeacherTail parse_teacher_tail(const std::string& name);
const char* teacher_tail_name(TeacherTail tail);
// The prior of kUnigram: log of (counts[j] + 1) / (Σ counts + vocab), counts [vocab] = how often
// each id occurs in the training windows (add-one smoothing: every id keeps some mass); of
// kUniform: −log vocab for every id. f32 [vocab].
std::vector<float> tail_log_prior(TeacherTail tail, const std::vector<int64_t>& counts);

}  // namespace refinery::distill
