#include "engine/eval/evaluator.hpp"

#include <chrono>

#include "engine/core/error.hpp"
#include "engine/eval/log_softmax.hpp"

namespace refinery::eval {
namespace {

void check_inputs(const model::LanguageModel& model, std::span<const int32_t> tokens,
                  std::span<const TokenWindow> windows, const ReferenceRows* reference) {
  const int64_t vocab = model.vocab_size();
  if (reference != nullptr && reference->vocab_size() != vocab)
    throw_user_error("the reference has a vocabulary of ", reference->vocab_size(),
                     " tokens but the model has ", vocab,
                     "; KL divergence needs the same vocabulary (the same tokenizer family)");
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw_user_error("token ", i, " of the data has id ", tokens[i],
                       ", outside the model's vocabulary of ", vocab,
                       "; the data was tokenized for another model");
  for (const auto& w : windows) {
    if (w.length > model.max_sequence_length())
      throw_user_error("--seq-len ", w.length, " exceeds the model's context of ",
                       model.max_sequence_length(), " tokens; pass a smaller --seq-len");
    if (w.begin < 0 || w.begin + w.length > static_cast<int64_t>(tokens.size()) ||
        w.first_target < 1)
      throw_internal_error("bad evaluation window");
  }
}

}  // namespace

EvalResult evaluate(model::LanguageModel& model, std::span<const int32_t> tokens,
                    std::span<const TokenWindow> windows, ReferenceRows* reference,
                    const EvalOptions& options) {
  check_inputs(model, tokens, windows, reference);
  const int64_t vocab = model.vocab_size();
  const auto start = std::chrono::steady_clock::now();
  EvalResult result;
  ComparisonAccumulator comparison;

  for (size_t wi = 0; wi < windows.size(); ++wi) {
    const TokenWindow& w = windows[wi];
    const auto window_tokens = tokens.subspan(static_cast<size_t>(w.begin),
                                              static_cast<size_t>(w.length));
    if (reference != nullptr) reference->begin_window(static_cast<int64_t>(wi), window_tokens);
    int64_t expected_position = 0;
    try {
      model.score(
          window_tokens,
          [&](int64_t first, const float* logits, int64_t rows) {
            if (first != expected_position || rows < 0 || first + rows > w.length)
              throw_internal_error("the model delivered rows ", first, "..", first + rows,
                                   " where position ", expected_position, " was due");
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t position = first + r;  // predicts the token at position + 1
              const float* row = logits + r * vocab;
              ReferenceRow ref_row;
              if (reference != nullptr) ref_row = reference->next_row();
              if (position + 1 < w.first_target || position + 1 >= w.length) continue;
              const int32_t target = window_tokens[static_cast<size_t>(position + 1)];
              if (reference != nullptr) {
                const PositionComparison c = compare_position(row, vocab, ref_row, target);
                result.nll.add(c.nll);
                comparison.add(c);
              } else {
                result.nll.add(-log_prob(row, row_stats(row, vocab), target));
              }
            }
            expected_position = first + rows;
          },
          options.chunk_rows);
      if (expected_position != w.length)
        throw_internal_error("the model delivered ", expected_position, " rows for a window of ",
                             w.length);
      if (reference != nullptr) reference->end_window();
    } catch (...) {
      if (reference != nullptr) reference->abandon_window();
      throw;
    }
    result.forwarded_tokens += w.length;
    ++result.windows;
    if (options.on_window) options.on_window(result.forwarded_tokens);
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (reference != nullptr) result.comparison = comparison.finish();
  return result;
}

}  // namespace refinery::eval
