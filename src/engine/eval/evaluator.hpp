#pragma once
// Streams a model over the windows of a token stream (token_windows.hpp) and measures its
// perplexity and, with a reference (reference_rows.hpp), the comparison statistics of
// comparison_statistics.hpp — over exactly the same scored tokens. Logits arrive in chunks of
// positions and are reduced at once (DESIGN §1.4).

#include <cstdint>
#include <functional>
#include <optional>
#include <span>

#include "engine/eval/comparison_statistics.hpp"
#include "engine/eval/reference_rows.hpp"
#include "engine/eval/statistics.hpp"
#include "engine/eval/token_windows.hpp"
#include "engine/model/language_model.hpp"

namespace refinery::eval {

struct EvalOptions {
  int64_t chunk_rows = 256;  // rows per logits chunk asked of the model
  // Called after each window with the tokens fed so far (for progress).
  std::function<void(int64_t forwarded_tokens)> on_window;
};

struct EvalResult {
  NllSums nll;  // the model's NLL over the scored tokens
  std::optional<ComparisonResult> comparison;
  int64_t windows = 0;
  int64_t forwarded_tokens = 0;  // tokens fed to the model (window lengths summed)
  double seconds = 0;            // wall time of the whole evaluation
  double perplexity() const { return nll.perplexity(); }
  // Model throughput: forwarded tokens per wall second (with a reference model, both models'
  // time is in `seconds`).
  double tokens_per_s() const {
    return seconds > 0 ? static_cast<double>(forwarded_tokens) / seconds : 0.0;
  }
};

// User errors: a window longer than the model's max_sequence_length, a token id outside the
// vocabulary, a reference with another vocabulary size.
EvalResult evaluate(model::LanguageModel& model, std::span<const int32_t> tokens,
                    std::span<const TokenWindow> windows, ReferenceRows* reference,
                    const EvalOptions& options = {});

}  // namespace refinery::eval
