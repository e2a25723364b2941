#pragma once
// Multiple-choice accuracy the way lm-evaluation-harness scores `output_type: multiple_choice`
// tasks (lm_eval/api/task.py, process_results; lm_eval/api/model.py, TemplateLM):
//  - each choice is the continuation target_delimiter + choice (the harness default delimiter is
//    " ") of the context; its loglikelihood is the sum of log q over the continuation's tokens;
//  - the pair is encoded as the harness does: trailing whitespace of the context moves to the
//    front of the continuation; whole = encode(context + continuation), context_ids =
//    encode(context), continuation_ids = whole[len(context_ids):]; an empty context becomes
//    [prefix token] (BOS, else EOS); the model sees (context_ids + continuation_ids), keeping the
//    last max_sequence_length + 1 ids, without the final one;
//  - acc: argmax of the loglikelihoods (first on ties) equals the answer; acc_norm: argmax of
//    loglikelihood / len(choice), where len counts the choice's Unicode code points (the
//    harness's `len(str)`, on the choice without the delimiter);
//  - stderr of each: the sample standard deviation (n - 1) of the 0/1 scores over sqrt(n).
//
// Input JSONL, one task item per line:
//   {"context": "...", "choices": ["...", ...], "answer": 1}   (answer: index or the choice text)

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/eval/token_stream.hpp"
#include "engine/model/language_model.hpp"

namespace refinery::eval {

struct MultipleChoiceItem {
  std::string context;
  std::vector<std::string> choices;
  int64_t answer = 0;
  std::string origin;  // "file:line"
};

// User errors name the file and line: bad JSON, missing/mistyped fields, an answer out of range
// or not among the choices, an empty choice, an empty file.
std::vector<MultipleChoiceItem> load_multiple_choice(const std::string& path);

struct MultipleChoiceOptions {
  std::string target_delimiter = " ";
  std::optional<int32_t> prefix_token;  // for empty contexts (BOS, else EOS)
  int64_t chunk_rows = 256;
};

struct MultipleChoiceResult {
  int64_t items = 0;
  double acc = 0, acc_stderr = 0;
  double acc_norm = 0, acc_norm_stderr = 0;
  std::vector<std::vector<double>> loglikelihoods;  // [items][choices]
};

MultipleChoiceResult evaluate_multiple_choice(model::LanguageModel& model,
                                              const std::vector<MultipleChoiceItem>& items,
                                              const TextEncoder& encode,
                                              const MultipleChoiceOptions& options = {});

// The log-likelihood of `continuation` after `context` (token ids), scoring positions as above.
double continuation_loglikelihood(model::LanguageModel& model, std::vector<int32_t> context,
                                  const std::vector<int32_t>& continuation, int64_t chunk_rows);

}  // namespace refinery::eval
