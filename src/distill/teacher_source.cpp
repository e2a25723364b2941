// The online and offline teacher sources.
#include "distill/teacher_source.hpp"

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
  train::TeacherTargets t;
  t.top_k_ids = backend_->upload(ids);
  t.top_k_log_probs = backend_->upload(lp);
  return t;
}

}  // namespace refinery::distill
