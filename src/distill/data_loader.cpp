// Training windows in a seeded, resumable order; the contract is in data_loader.hpp.

#include "distill/data_loader.hpp"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "engine/core/error.hpp"

namespace refinery::distill {

DataLoader::DataLoader(std::vector<int32_t> tokens, DataLoaderOptions options)
    : tokens_(std::move(tokens)), options_(options) {
  if (options_.seq_len < 2)
    throw_user_error("distill data loader: seq_len must be at least 2 (a window needs a token to "
                     "predict), found ",
                     options_.seq_len, "; pass a larger --seq-len");
  if (options_.batch_size < 1)
    throw_user_error("distill data loader: batch_size must be at least 1, found ",
                     options_.batch_size, "; pass a positive --batch");
  // Written so that NaN fails too.
  if (!(options_.held_out_fraction >= 0.0 && options_.held_out_fraction < 1.0))
    throw_user_error("distill data loader: held_out_fraction must be in [0, 1), found ",
                     options_.held_out_fraction, "; pass a fraction such as 0.01");
  if (options_.min_held_out_windows < 1)
    throw_user_error("distill data loader: min_held_out_windows must be at least 1, found ",
                     options_.min_held_out_windows);

  const int64_t n_tokens = static_cast<int64_t>(tokens_.size());
  const int64_t windows = n_tokens / options_.seq_len;
  // floor(fraction * W) in double is exact enough: W < 2^53 for any stream that fits in memory.
  const auto by_fraction =
      static_cast<int64_t>(std::floor(options_.held_out_fraction * static_cast<double>(windows)));
  held_out_windows_ = std::max(options_.min_held_out_windows, by_fraction);
  train_windows_ = windows - held_out_windows_;
  if (train_windows_ < options_.batch_size)
    throw_user_error("distill data loader: the training data has ", n_tokens, " tokens = ", windows,
                     " windows of seq_len ", options_.seq_len, "; expected at least ",
                     held_out_windows_ + options_.batch_size, " windows (", held_out_windows_,
                     " held out + one batch of ", options_.batch_size,
                     " train windows), i.e. at least ",
                     (held_out_windows_ + options_.batch_size) * options_.seq_len,
                     " tokens; give more data or lower --seq-len / --batch");
  tokens_.resize(static_cast<size_t>(windows * options_.seq_len));
  tokens_.shrink_to_fit();
  load_epoch(0);
}

std::vector<int64_t> DataLoader::epoch_order(int64_t n_windows, uint64_t seed, int64_t epoch) {
  REFINERY_CHECK(n_windows >= 0 && epoch >= 0, "n_windows ", n_windows, " epoch ", epoch);
  std::vector<int64_t> order(static_cast<size_t>(n_windows));
  for (int64_t i = 0; i < n_windows; ++i) order[static_cast<size_t>(i)] = i;
  std::mt19937_64 rng(seed + static_cast<uint64_t>(epoch));
  for (int64_t i = n_windows - 1; i >= 1; --i) {
    const auto bound = static_cast<uint64_t>(i + 1);
    // (2^64 - bound) mod bound == 2^64 mod bound; draws below it would bias small j.
    const uint64_t reject_below = (uint64_t{0} - bound) % bound;
    uint64_t r = rng();
    while (r < reject_below) r = rng();
    const auto j = static_cast<size_t>(r % bound);
    std::swap(order[static_cast<size_t>(i)], order[j]);
  }
  return order;
}

void DataLoader::load_epoch(int64_t epoch) {
  if (order_epoch_ == epoch) return;
  order_ = epoch_order(train_windows_, options_.seed, epoch);
  order_epoch_ = epoch;
}

std::vector<int32_t> DataLoader::next_batch() {
  const int64_t batch = options_.batch_size;
  const int64_t len = options_.seq_len;
  if (train_windows_ - cursor_.position < batch) {  // drop the remainder, reshuffle
    cursor_ = Cursor{cursor_.epoch + 1, 0};
    load_epoch(cursor_.epoch);
  }
  std::vector<int32_t> out(static_cast<size_t>(batch * len));
  last_windows_.clear();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t window = order_[static_cast<size_t>(cursor_.position + b)];
    last_windows_.push_back(window);
    std::copy_n(tokens_.begin() + window * len, len, out.begin() + b * len);
  }
  cursor_.position += batch;
  return out;
}

std::vector<int32_t> DataLoader::peek_next_batch() const {
  const int64_t batch = options_.batch_size;
  const int64_t len = options_.seq_len;
  Cursor at = cursor_;
  if (train_windows_ - at.position < batch) at = Cursor{at.epoch + 1, 0};  // as next_batch()
  std::vector<int64_t> other;
  const std::vector<int64_t>* order = &order_;
  if (order_epoch_ != at.epoch) {
    other = epoch_order(train_windows_, options_.seed, at.epoch);
    order = &other;
  }
  std::vector<int32_t> out(static_cast<size_t>(batch * len));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t window = (*order)[static_cast<size_t>(at.position + b)];
    std::copy_n(tokens_.begin() + window * len, len, out.begin() + b * len);
  }
  return out;
}

std::span<const int32_t> DataLoader::held_out_window(int64_t i) const {
  if (i < 0 || i >= held_out_windows_)
    throw_user_error("distill data loader: held-out window ", i, " does not exist; expected 0..",
                     held_out_windows_ - 1);
  const int64_t window = train_windows_ + i;
  return std::span<const int32_t>(tokens_).subspan(static_cast<size_t>(window * options_.seq_len),
                                                   static_cast<size_t>(options_.seq_len));
}

void DataLoader::seek(const Cursor& cursor) {
  if (cursor.epoch < 0 || cursor.position < 0 || cursor.position > train_windows_)
    throw_user_error("distill data loader: cannot resume at epoch ", cursor.epoch, " position ",
                     cursor.position, "; expected epoch >= 0 and position in 0..", train_windows_,
                     " (the train windows of this data and seq_len); resume with the same data, "
                     "--seq-len and held-out settings as the saved run");
  cursor_ = cursor;
  load_epoch(cursor_.epoch);
}

}  // namespace refinery::distill
