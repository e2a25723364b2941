#include "engine/eval/token_windows.hpp"

#include <algorithm>

#include "engine/core/error.hpp"

namespace refinery::eval {

std::vector<TokenWindow> non_overlapping_windows(int64_t n_tokens, int64_t seq_len) {
  if (seq_len < 2) throw_user_error("--seq-len is ", seq_len, "; it must be at least 2");
  if (n_tokens < seq_len)
    throw_user_error("the data has ", n_tokens, " tokens, fewer than one window of --seq-len ",
                     seq_len, "; give more data or a smaller --seq-len");
  std::vector<TokenWindow> windows;
  for (int64_t begin = 0; begin + seq_len <= n_tokens; begin += seq_len)
    windows.push_back({begin, seq_len, 1});
  return windows;
}

std::vector<TokenWindow> strided_windows(int64_t n_tokens, int64_t seq_len, int64_t stride) {
  if (seq_len < 2) throw_user_error("--seq-len is ", seq_len, "; it must be at least 2");
  if (stride < 1 || stride > seq_len)
    throw_user_error("--stride is ", stride, "; it must be between 1 and --seq-len (", seq_len,
                     ")");
  if (n_tokens < 2) throw_user_error("the data has ", n_tokens, " tokens; at least 2 are needed");
  std::vector<TokenWindow> windows;
  int64_t previous_end = 0;
  for (int64_t begin = 0; begin < n_tokens; begin += stride) {
    const int64_t end = std::min(begin + seq_len, n_tokens);
    // Targets are the tokens in [previous_end, end); token 0 has no context and is never one.
    const int64_t first = std::max<int64_t>(previous_end, 1) - begin;
    if (end - begin > first) windows.push_back({begin, end - begin, first});
    previous_end = end;
    if (end == n_tokens) break;
  }
  return windows;
}

}  // namespace refinery::eval
