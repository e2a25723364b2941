#pragma once
// The training data order of `refine distill` (issue 5: deterministic data order from a seed).
//
// Windows. The token stream (every document's ids concatenated, as eval's read_token_stream and the
// token dataset of DESIGN §5 give it) is cut like eval's non-overlapping windows: W = floor(N / L)
// windows of L = seq_len tokens, window w = tokens[w * L, (w + 1) * L); the N mod L tokens after the
// last window are dropped. Windows may span document boundaries (no separators, like eval).
//
// Split by window index. H = max(min_held_out_windows, floor(held_out_fraction * W)) held-out
// windows are the LAST H windows (w = W - H .. W - 1), never shuffled and never trained on; the
// T = W - H train windows are w = 0 .. T - 1.
//
// Order. Epoch e serves a permutation of 0 .. T - 1 that depends only on (seed, epoch), so the
// same seed gives the same run on any machine and standard library. The exact procedure:
//   rng = std::mt19937_64(seed + uint64_t(e))   (unsigned wrap-around)
//   order = [0, 1, ..., T - 1]
//   for i = T - 1 down to 1:
//     bound = i + 1
//     draw r = rng() until r >= (2^64 mod bound)   (rejection: no modulo bias)
//     j = r mod bound
//     swap(order[i], order[j])
// (Fisher-Yates; std::shuffle / uniform_int_distribution are not used because their draws are
// implementation-defined, which would make the order differ between libstdc++ and libc++.)
//
// Batches. next_batch() serves the next batch_size windows of the epoch's order. When fewer than
// batch_size windows remain in the epoch, those T mod batch_size windows are dropped for this epoch
// and the loader moves to epoch e + 1 (a new shuffle, so a dropped window is served in later
// epochs with probability ~1). Every batch is therefore full: [batch_size * seq_len] tokens.
//
// Resume. The whole state is the Cursor {epoch, position}; a loader over the same tokens and
// options that seek()s to a saved cursor serves exactly what the original would have served next.

#include <cstdint>
#include <span>
#include <vector>

namespace refinery::distill {

struct DataLoaderOptions {
  int64_t seq_len = 2048;           // tokens per window; >= 2 (a window needs one scored token)
  int64_t batch_size = 4;           // windows per batch; >= 1
  uint64_t seed = 0;                // epoch e is shuffled with std::mt19937_64(seed + e)
  double held_out_fraction = 0.01;  // in [0, 1): share of the windows held out (rounded down)
  int64_t min_held_out_windows = 1;  // >= 1: at least this many held-out windows
};

struct Cursor {
  int64_t epoch = 0;
  int64_t position = 0;  // windows already served in this epoch, 0 .. train_windows()
};

class DataLoader {
 public:
  // User errors: seq_len < 2, batch_size < 1, held_out_fraction outside [0, 1) (or NaN),
  // min_held_out_windows < 1, and a stream too short for the held-out windows plus one full batch
  // of train windows (the message gives the token counts and how to fix it).
  DataLoader(std::vector<int32_t> tokens, DataLoaderOptions options);

  int64_t train_windows() const { return train_windows_; }
  int64_t held_out_windows() const { return held_out_windows_; }
  int64_t seq_len() const { return options_.seq_len; }
  int64_t batch_size() const { return options_.batch_size; }

  // The next batch: tokens [batch_size * seq_len], row b = one window's seq_len tokens. Advances
  // the cursor; first moves to the next epoch (new shuffle) when fewer than batch_size windows
  // remain in the current one (the remainder is dropped for that epoch).
  std::vector<int32_t> next_batch();
  // What next_batch() will return, without advancing (a teacher can start on it early).
  std::vector<int32_t> peek_next_batch() const;
  // The stream window indices (0 .. train_windows() - 1) of the batch next_batch() returned last,
  // in row order (an offline teacher cache is read by window).
  const std::vector<int64_t>& last_batch_windows() const { return last_windows_; }

  // Held-out window i (0 .. held_out_windows() - 1) = stream window train_windows() + i: [seq_len]
  // tokens viewing the loader's storage. User error when i is out of range.
  std::span<const int32_t> held_out_window(int64_t i) const;

  const Cursor& cursor() const { return cursor_; }
  // Resumes at a saved cursor. User error when epoch < 0 or position outside 0..train_windows().
  void seek(const Cursor& cursor);

  // The train-window order of an epoch (window indices 0 .. n_windows - 1), exactly as documented
  // above. Exposed so that the order can be checked and reproduced elsewhere.
  static std::vector<int64_t> epoch_order(int64_t n_windows, uint64_t seed, int64_t epoch);

 private:
  void load_epoch(int64_t epoch);  // fills order_ for `epoch`

  std::vector<int32_t> tokens_;  // [W * seq_len] (the dropped tail is cut off)
  DataLoaderOptions options_;
  int64_t train_windows_ = 0;
  int64_t held_out_windows_ = 0;
  Cursor cursor_;
  int64_t order_epoch_ = -1;    // the epoch order_ holds
  std::vector<int64_t> order_;  // [train_windows_]
  std::vector<int64_t> last_windows_;
};

}  // namespace refinery::distill
