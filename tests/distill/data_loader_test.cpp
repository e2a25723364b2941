// The training data loader of `refine distill` (src/distill/data_loader): seeded order, one pass
// over the train windows per epoch, a fixed held-out split, resume from a cursor, user errors.
//
// The token stream is 0, 1, 2, ...: window w holds w * L .. w * L + L - 1, so every served row
// names its window and must be contiguous.

#include "distill/data_loader.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "engine/core/error.hpp"
#include "tests/support/expect_error.hpp"

namespace refinery::distill {
namespace {

using test::error_message_of;

std::vector<int32_t> iota_tokens(int64_t n) {
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  std::iota(tokens.begin(), tokens.end(), 0);
  return tokens;
}

// L = 4, 53 windows + 3 leftover tokens; 10% held out -> 5 held-out, 48 train windows; batches of
// 5 -> 9 batches per epoch, 3 windows dropped per epoch.
constexpr int64_t kLen = 4;
constexpr int64_t kWindows = 53;
constexpr int64_t kTrain = 48;
constexpr int64_t kHeld = 5;
constexpr int64_t kBatch = 5;
constexpr int64_t kBatchesPerEpoch = kTrain / kBatch;  // 9

DataLoaderOptions small_options(uint64_t seed) {
  DataLoaderOptions options;
  options.seq_len = kLen;
  options.batch_size = kBatch;
  options.seed = seed;
  options.held_out_fraction = 0.1;
  return options;
}

DataLoader small_loader(uint64_t seed) {
  return DataLoader(iota_tokens(kWindows * kLen + 3), small_options(seed));
}

// The window indices of one batch; fails the test when a row is not one whole window.
std::vector<int64_t> windows_of(const std::vector<int32_t>& batch) {
  EXPECT_EQ(static_cast<int64_t>(batch.size()), kBatch * kLen);
  std::vector<int64_t> windows;
  for (int64_t b = 0; b < kBatch; ++b) {
    const int32_t first = batch[static_cast<size_t>(b * kLen)];
    EXPECT_EQ(first % kLen, 0) << "row " << b << " does not start at a window boundary";
    for (int64_t t = 0; t < kLen; ++t)
      EXPECT_EQ(batch[static_cast<size_t>(b * kLen + t)], first + t) << "row " << b;
    windows.push_back(first / kLen);
  }
  return windows;
}

TEST(DistillDataLoader, SplitsWindowsLikeEval) {
  DataLoader loader = small_loader(0);
  EXPECT_EQ(loader.train_windows(), kTrain);
  EXPECT_EQ(loader.held_out_windows(), kHeld);
  // min_held_out_windows wins over a small fraction.
  DataLoaderOptions options = small_options(0);
  options.held_out_fraction = 0.0;
  options.min_held_out_windows = 2;
  DataLoader two(iota_tokens(kWindows * kLen), options);
  EXPECT_EQ(two.held_out_windows(), 2);
  EXPECT_EQ(two.train_windows(), kWindows - 2);
}

TEST(DistillDataLoader, SameSeedSameBatchesOtherSeedOthers) {
  DataLoader a = small_loader(7);
  DataLoader b = small_loader(7);
  DataLoader c = small_loader(8);
  bool any_differs = false;
  for (int i = 0; i < 3 * kBatchesPerEpoch; ++i) {
    const auto batch_a = a.next_batch();
    EXPECT_EQ(batch_a, b.next_batch()) << "batch " << i;
    if (batch_a != c.next_batch()) any_differs = true;
  }
  EXPECT_TRUE(any_differs);
}

TEST(DistillDataLoader, EveryTrainWindowOncePerEpochMinusTheDroppedRemainder) {
  DataLoader loader = small_loader(3);
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    std::vector<int64_t> served;
    for (int64_t i = 0; i < kBatchesPerEpoch; ++i) {
      const auto batch = loader.next_batch();
      EXPECT_EQ(loader.cursor().epoch, epoch);
      EXPECT_EQ(loader.cursor().position, (i + 1) * kBatch);
      for (int64_t w : windows_of(batch)) served.push_back(w);
    }
    const std::set<int64_t> distinct(served.begin(), served.end());
    EXPECT_EQ(distinct.size(), served.size()) << "a window served twice in epoch " << epoch;
    EXPECT_EQ(static_cast<int64_t>(served.size()), kBatchesPerEpoch * kBatch);
    for (int64_t w : served) EXPECT_LT(w, kTrain) << "held-out window trained on";
    // The windows not served are exactly the tail of the epoch's documented order.
    const auto order = DataLoader::epoch_order(kTrain, 3, epoch);
    EXPECT_EQ(served, std::vector<int64_t>(order.begin(), order.begin() + served.size()));
    for (auto it = order.begin() + static_cast<int64_t>(served.size()); it != order.end(); ++it)
      EXPECT_EQ(distinct.count(*it), 0u);
  }
  // The next batch starts epoch 4.
  loader.next_batch();
  EXPECT_EQ(loader.cursor().epoch, 4);
  EXPECT_EQ(loader.cursor().position, kBatch);
}

TEST(DistillDataLoader, HeldOutWindowsAreTheLastWindowsAndNeverTrained) {
  DataLoader loader = small_loader(11);
  for (int64_t i = 0; i < kHeld; ++i) {
    const auto window = loader.held_out_window(i);
    ASSERT_EQ(static_cast<int64_t>(window.size()), kLen);
    for (int64_t t = 0; t < kLen; ++t)
      EXPECT_EQ(window[static_cast<size_t>(t)], (kTrain + i) * kLen + t) << "held-out " << i;
  }
  // The 3 leftover tokens after the last window are in no window.
  EXPECT_EQ(loader.held_out_window(kHeld - 1).back(), kWindows * kLen - 1);
  for (int i = 0; i < 5 * kBatchesPerEpoch; ++i)
    for (int64_t w : windows_of(loader.next_batch())) EXPECT_LT(w, kTrain);
  EXPECT_NE(error_message_of([&] { loader.held_out_window(kHeld); }).find("held-out window 5"),
            std::string::npos);
  error_message_of([&] { loader.held_out_window(-1); });
}

TEST(DistillDataLoader, EpochsHaveDifferentOrders) {
  DataLoader loader = small_loader(5);
  std::vector<std::vector<int64_t>> epochs(3);
  for (auto& epoch : epochs)
    for (int64_t i = 0; i < kBatchesPerEpoch; ++i)
      for (int64_t w : windows_of(loader.next_batch())) epoch.push_back(w);
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  EXPECT_NE(epochs[0], epochs[2]);
}

TEST(DistillDataLoader, EpochOrderIsAPermutationSeededWithSeedPlusEpoch) {
  for (int64_t n : {0, 1, 2, 3, 17, 1000}) {
    auto order = DataLoader::epoch_order(n, 99, 2);
    std::sort(order.begin(), order.end());
    std::vector<int64_t> expected(static_cast<size_t>(n));
    std::iota(expected.begin(), expected.end(), 0);
    EXPECT_EQ(order, expected) << n;
  }
  // Documented: epoch e uses std::mt19937_64(seed + e), wrapping around.
  EXPECT_EQ(DataLoader::epoch_order(100, 10, 3), DataLoader::epoch_order(100, 13, 0));
  EXPECT_EQ(DataLoader::epoch_order(100, std::numeric_limits<uint64_t>::max(), 1),
            DataLoader::epoch_order(100, 0, 0));
}

// A pin, not an outside reference: these values were produced by this implementation of the
// documented procedure. If they change, every saved run's data order changes with them.
TEST(DistillDataLoader, EpochOrderPinned) {
  EXPECT_EQ(DataLoader::epoch_order(10, 42, 0),
            (std::vector<int64_t>{1, 7, 9, 0, 3, 8, 4, 2, 5, 6}));
}

TEST(DistillDataLoader, SeekResumeEqualsUninterrupted) {
  DataLoader original = small_loader(21);
  std::vector<std::vector<int32_t>> batches;  // batches 1..17 (index 0..16)
  Cursor saved;
  for (int i = 1; i <= 17; ++i) {
    batches.push_back(original.next_batch());
    if (i == 7) saved = original.cursor();
  }
  EXPECT_EQ(saved.epoch, 0);
  EXPECT_EQ(saved.position, 7 * kBatch);
  // Batches 8..17 cross the epoch boundary after batch 9.
  ASSERT_EQ(original.cursor().epoch, 1);

  DataLoader resumed = small_loader(21);
  resumed.seek(saved);
  EXPECT_EQ(resumed.cursor().epoch, saved.epoch);
  EXPECT_EQ(resumed.cursor().position, saved.position);
  for (int i = 8; i <= 17; ++i)
    EXPECT_EQ(resumed.next_batch(), batches[static_cast<size_t>(i - 1)]) << "batch " << i;
  EXPECT_EQ(resumed.cursor().epoch, original.cursor().epoch);
  EXPECT_EQ(resumed.cursor().position, original.cursor().position);

  // Seeking to a later epoch directly, and to the end of an epoch (the remainder), works too.
  DataLoader later = small_loader(21);
  later.seek(Cursor{1, 0});
  EXPECT_EQ(later.next_batch(), batches[kBatchesPerEpoch]);
  later.seek(Cursor{0, kTrain});
  EXPECT_EQ(later.next_batch(), batches[kBatchesPerEpoch]);
}

// peek_next_batch() is what next_batch() returns next, without advancing: across two epoch
// boundaries (9 batches per epoch) and after a seek.
TEST(DistillDataLoader, PeekIsTheNextBatchWithoutAdvancing) {
  DataLoader loader = small_loader(5);
  for (int i = 0; i < 2 * kBatchesPerEpoch + 3; ++i) {
    const std::vector<int32_t> peeked = loader.peek_next_batch();
    EXPECT_EQ(loader.peek_next_batch(), peeked) << "peeking twice, batch " << i;
    const Cursor before = loader.cursor();
    EXPECT_EQ(loader.next_batch(), peeked) << "batch " << i;
    EXPECT_NE(loader.cursor().position, before.position);
  }
  loader.seek(Cursor{4, kTrain});  // the end of an epoch not loaded yet: the peek crosses it
  const std::vector<int32_t> peeked = loader.peek_next_batch();
  EXPECT_EQ(loader.next_batch(), peeked);
  EXPECT_EQ(loader.cursor().epoch, 5);
}

TEST(DistillDataLoader, SeekOutOfRangeIsAUserError) {
  DataLoader loader = small_loader(0);
  const std::string message = error_message_of([&] { loader.seek(Cursor{0, kTrain + 1}); });
  EXPECT_NE(message.find("position 49"), std::string::npos) << message;
  error_message_of([&] { loader.seek(Cursor{-1, 0}); });
  error_message_of([&] { loader.seek(Cursor{0, -1}); });
  // A failed seek leaves the cursor alone.
  EXPECT_EQ(loader.cursor().epoch, 0);
  EXPECT_EQ(loader.cursor().position, 0);
}

TEST(DistillDataLoader, TooShortDataIsAUserError) {
  // Exactly enough: one held-out window (fraction 0, the minimum 1) + one batch.
  DataLoaderOptions options = small_options(0);
  options.held_out_fraction = 0.0;
  const int64_t minimum = (1 + kBatch) * kLen;
  DataLoader just_enough(iota_tokens(minimum), options);
  EXPECT_EQ(just_enough.train_windows(), kBatch);
  EXPECT_EQ(just_enough.held_out_windows(), 1);
  const auto first = windows_of(just_enough.next_batch());
  EXPECT_EQ(std::set<int64_t>(first.begin(), first.end()), (std::set<int64_t>{0, 1, 2, 3, 4}));

  const std::string message =
      error_message_of([&] { DataLoader(iota_tokens(minimum - 1), options); });
  EXPECT_NE(message.find(std::to_string(minimum - 1) + " tokens"), std::string::npos) << message;
  EXPECT_NE(message.find("at least " + std::to_string(minimum) + " tokens"), std::string::npos)
      << message;
  error_message_of([&] { DataLoader({}, options); });
  // One window only: no room for a train and a held-out window even with batch 1.
  options.batch_size = 1;
  error_message_of([&] { DataLoader(iota_tokens(kLen), options); });
  DataLoader two_windows(iota_tokens(2 * kLen), options);
  EXPECT_EQ(two_windows.train_windows(), 1);
}

TEST(DistillDataLoader, BadOptionsAreUserErrors) {
  const auto tokens = iota_tokens(kWindows * kLen);
  auto with = [&](auto change) {
    DataLoaderOptions options = small_options(0);
    change(options);
    return error_message_of([&] { DataLoader(tokens, options); });
  };
  EXPECT_NE(with([](DataLoaderOptions& o) { o.seq_len = 0; }).find("seq_len"), std::string::npos);
  with([](DataLoaderOptions& o) { o.seq_len = -4; });
  with([](DataLoaderOptions& o) { o.seq_len = 1; });
  EXPECT_NE(with([](DataLoaderOptions& o) { o.batch_size = 0; }).find("batch_size"),
            std::string::npos);
  with([](DataLoaderOptions& o) { o.batch_size = -1; });
  EXPECT_NE(with([](DataLoaderOptions& o) { o.held_out_fraction = 1.0; }).find("held_out_fraction"),
            std::string::npos);
  with([](DataLoaderOptions& o) { o.held_out_fraction = -0.01; });
  with([](DataLoaderOptions& o) { o.held_out_fraction = std::nan(""); });
  with([](DataLoaderOptions& o) { o.min_held_out_windows = 0; });
}

}  // namespace
}  // namespace refinery::distill
