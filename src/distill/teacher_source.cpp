// The online and offline teacher sources.
#include "distill/teacher_source.hpp"

#include <algorithm>
#include <cmath>

#include "engine/core/error.hpp"

namespace refinery::distill {

OnlineTeacher::OnlineTeacher(const std::filesystem::path& model_dir,
                             std::shared_ptr<backend::Backend> backend)
    : model_(model::Transformer::load(model_dir, std::move(backend))) {}

train::TeacherTargets OnlineTeacher::targets(std::span<const int32_t> tokens, int64_t sequences,
                                             std::span<const int64_t>) {
  model::KvCache cache = model_->make_cache(static_cast<int64_t>(tokens.size()));
  hidden_ = model_->forward_hidden_batch(tokens, sequences, cache);
  train::TeacherTargets t;
  t.teacher = model_.get();
  t.teacher_hidden = hidden_;
  return t;
}

namespace {

// Each row of log-probabilities [rows, k] shifted so that its probabilities sum to 1 (the fp16
// rounding of a priority sample's estimates leaves sums of 1 ± ~1e-3). -inf entries stay -inf.
void normalize_rows(float* lp, int64_t rows, int64_t k) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = lp + r * k;
    const float hi = *std::max_element(row, row + k);
    if (!std::isfinite(hi)) continue;
    double sum = 0.0;
    for (int64_t i = 0; i < k; ++i) sum += std::exp(static_cast<double>(row[i]) - hi);
    const auto shift = static_cast<float>(hi + std::log(sum));
    for (int64_t i = 0; i < k; ++i) row[i] -= shift;
  }
}

}  // namespace

CachedTeacher::CachedTeacher(const std::filesystem::path& cache,
                             std::shared_ptr<backend::Backend> backend)
    : reader_(cache.string()), backend_(std::move(backend)) {
  if (reader_.info().top_k <= 0)
    throw_user_error(cache.string(),
                     ": a full-logits cache (--top-k 0); distillation reads top-k caches — "
                     "make one with `refine logits ... --top-k 64`");
  if (!reader_.is_complete())
    throw_user_error(cache.string(), ": the cache is incomplete (", reader_.sequences(),
                     " of ", reader_.info().planned_sequences,
                     " sequences); finish it by rerunning the same `refine logits` command");
  for (int64_t s = 0; s < reader_.sequences(); ++s)
    if (reader_.sequence_length(s) != reader_.info().seq_len)
      throw_user_error(cache.string(), ": sequence ", s, " has ", reader_.sequence_length(s),
                       " tokens, expected the cache's seq_len ", reader_.info().seq_len,
                       "; distillation needs equal-length windows (a cache from `refine logits`)");
}

std::vector<int32_t> CachedTeacher::token_stream() const {
  std::vector<int32_t> out;
  for (int64_t s = 0; s < reader_.sequences(); ++s) {
    const auto ids = reader_.sequence_tokens(s);
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

train::TeacherTargets CachedTeacher::targets(std::span<const int32_t> tokens, int64_t sequences,
                                             std::span<const int64_t> windows) {
  const int64_t len = reader_.info().seq_len, k = reader_.info().top_k;
  REFINERY_CHECK(static_cast<int64_t>(windows.size()) == sequences &&
                     static_cast<int64_t>(tokens.size()) == sequences * len,
                 "cached teacher: ", windows.size(), " windows for ", sequences, " sequences of ",
                 len);
  Tensor ids = Tensor::empty(DType::kI32, {sequences * len, k});
  Tensor lp = Tensor::empty(DType::kF32, {sequences * len, k});
  for (int64_t b = 0; b < sequences; ++b) {
    const int64_t s = windows[static_cast<std::size_t>(b)];
    REFINERY_CHECK(s >= 0 && s < reader_.sequences(), "cache sequence ", s);
    reader_.read_top_k(s, 0, len, ids.mutable_data<int32_t>() + b * len * k,
                       lp.mutable_data<float>() + b * len * k);
  }
  if (is_priority_sample()) normalize_rows(lp.mutable_data<float>(), sequences * len, k);
  train::TeacherTargets t;
  t.top_k_ids = backend_->upload(ids);
  t.top_k_log_probs = backend_->upload(lp);
  t.tail_log_prior = tail_log_prior_;
  return t;
}

void CachedTeacher::set_tail_prior(const std::vector<float>& log_prior) {
  REFINERY_CHECK(static_cast<int64_t>(log_prior.size()) == vocab_size(), "tail prior of ",
                 log_prior.size(), " ids for a vocabulary of ", vocab_size());
  tail_log_prior_ = backend_->upload(
      Tensor::copy_of(DType::kF32, {vocab_size()}, log_prior.data()));
}

TeacherTail parse_teacher_tail(const std::string& name) {
  if (name == "bucket") return TeacherTail::kBucket;
  if (name == "unigram") return TeacherTail::kUnigram;
  if (name == "uniform") return TeacherTail::kUniform;
  throw_user_error("--teacher-tail ", name, " is not known; use bucket, unigram or uniform");
}

const char* teacher_tail_name(TeacherTail tail) {
  switch (tail) {
    case TeacherTail::kBucket: return "bucket";
    case TeacherTail::kUnigram: return "unigram";
    case TeacherTail::kUniform: return "uniform";
  }
  return "?";
}

std::vector<float> tail_log_prior(TeacherTail tail, const std::vector<int64_t>& counts) {
  const auto vocab = static_cast<int64_t>(counts.size());
  REFINERY_CHECK(vocab > 0, "tail prior over an empty vocabulary");
  std::vector<float> out(counts.size());
  if (tail == TeacherTail::kUniform) {
    std::fill(out.begin(), out.end(), static_cast<float>(-std::log(static_cast<double>(vocab))));
    return out;
  }
  double total = static_cast<double>(vocab);
  for (const int64_t c : counts) total += static_cast<double>(c);
  const double log_total = std::log(total);
  for (std::size_t j = 0; j < counts.size(); ++j)
    out[j] = static_cast<float>(std::log(static_cast<double>(counts[j] + 1)) - log_total);
  return out;
}

}  // namespace refinery::distill
