#pragma once
// How an evaluation cuts one token stream into the windows the model scores.
//
// Non-overlapping (the AWQ / GPTQ protocol, `--stride` absent): the stream is cut into
// floor(N / L) windows of L tokens, the remainder is dropped, and in every window the tokens at
// positions 1..L-1 are scored (each predicted from the window's tokens before it). GPTQ's
// llama_eval / AutoAWQ's evaluate_perplexity take the mean cross-entropy of
// logits[:, :-1] against tokens[:, 1:] per window, multiply by L, and divide the sum by
// (windows * L): with every window the same length, that is the mean NLL over exactly these
// (L - 1) * windows tokens, which is what we compute.
//
// Strided (the Hugging Face "Perplexity of fixed-length models" protocol, `--stride S`): windows
// start at 0, S, 2S, ...; each spans up to L tokens and ends at min(start + L, N); it scores only
// the tokens after the previous window's end (the first window scores 1..end-1); the loop stops
// at the window that reaches N. Every token but the first is scored exactly once, with up to
// L - S tokens of context. Hugging Face's guide weights each window's mean loss by its label
// count minus one (an approximation it notes); we average over the scored tokens exactly.

#include <cstdint>
#include <vector>

namespace refinery::eval {

struct TokenWindow {
  int64_t begin = 0;         // first token of the window in the stream
  int64_t length = 0;        // tokens fed to the model
  int64_t first_target = 1;  // window position of the first scored token (>= 1); scored are
                             // positions first_target..length-1, token j from logits row j-1
  int64_t scored() const { return length - first_target; }
};

// User error when seq_len < 2 or the stream is shorter than one window.
std::vector<TokenWindow> non_overlapping_windows(int64_t n_tokens, int64_t seq_len);
// User error when seq_len < 2, stride < 1 or stride > seq_len, or fewer than 2 tokens.
std::vector<TokenWindow> strided_windows(int64_t n_tokens, int64_t seq_len, int64_t stride);

}  // namespace refinery::eval
