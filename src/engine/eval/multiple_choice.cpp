#include "engine/eval/multiple_choice.hpp"

#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "engine/core/error.hpp"
#include "engine/eval/log_softmax.hpp"

namespace refinery::eval {
namespace {

int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;  // count every byte that does not continue a sequence
  return n;
}

bool is_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

double mean_stderr(const std::vector<double>& x) {
  const double n = static_cast<double>(x.size());
  if (x.size() < 2) return 0;
  double mean = 0;
  for (double v : x) mean += v;
  mean /= n;
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / (n - 1)) / std::sqrt(n);
}

size_t argmax(const std::vector<double>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return best;
}

}  // namespace

std::vector<MultipleChoiceItem> load_multiple_choice(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_user_error("cannot open the tasks file ", path, "; check the path");
  std::vector<MultipleChoiceItem> items;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = str(path, ":", line_no);
    nlohmann::json doc;
    try {
      doc = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw_user_error(where, ": not valid JSON (", e.what(),
                       "); expected {\"context\": ..., \"choices\": [...], \"answer\": N}");
    }
    MultipleChoiceItem item;
    item.origin = where;
    if (!doc.is_object() || !doc.contains("context") || !doc["context"].is_string())
      throw_user_error(where, ": expected a string \"context\"");
    item.context = doc["context"].get<std::string>();
    if (!doc.contains("choices") || !doc["choices"].is_array() || doc["choices"].size() < 2)
      throw_user_error(where, ": expected \"choices\": an array of at least 2 strings");
    for (const auto& c : doc["choices"]) {
      if (!c.is_string() || c.get<std::string>().empty())
        throw_user_error(where, ": every choice must be a non-empty string");
      item.choices.push_back(c.get<std::string>());
    }
    const auto n = static_cast<int64_t>(item.choices.size());
    if (!doc.contains("answer")) throw_user_error(where, ": missing \"answer\"");
    const auto& answer = doc["answer"];
    if (answer.is_number_integer()) {
      item.answer = answer.get<int64_t>();
      if (item.answer < 0 || item.answer >= n)
        throw_user_error(where, ": \"answer\" is ", item.answer, " but there are ", n,
                         " choices (0-based index expected)");
    } else if (answer.is_string()) {
      item.answer = -1;
      for (int64_t i = 0; i < n; ++i)
        if (item.choices[static_cast<size_t>(i)] == answer.get<std::string>()) item.answer = i;
      if (item.answer < 0)
        throw_user_error(where, ": \"answer\" \"", answer.get<std::string>(),
                         "\" is not one of the choices");
    } else {
      throw_user_error(where, ": \"answer\" must be a 0-based index or the text of a choice");
    }
    items.push_back(std::move(item));
  }
  if (items.empty()) throw_user_error("the tasks file ", path, " holds no items");
  return items;
}

double continuation_loglikelihood(model::LanguageModel& model, std::vector<int32_t> all,
                                  const std::vector<int32_t>& continuation, int64_t chunk_rows) {
  all.insert(all.end(), continuation.begin(), continuation.end());
  const auto max_len = model.max_sequence_length();
  if (static_cast<int64_t>(all.size()) > max_len + 1)
    all.erase(all.begin(), all.end() - (max_len + 1));
  const int64_t n_input = static_cast<int64_t>(all.size()) - 1;
  const int64_t n_cont = static_cast<int64_t>(continuation.size());
  const int64_t first_row = n_input - n_cont;  // row r predicts all[r + 1]
  const int64_t vocab = model.vocab_size();
  for (int32_t id : all)
    if (id < 0 || id >= vocab)
      throw_user_error("token id ", id, " is outside the model's vocabulary of ", vocab);
  double ll = 0;
  model.score(
      std::span<const int32_t>(all.data(), static_cast<size_t>(n_input)),
      [&](int64_t first, const float* logits, int64_t rows) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t position = first + r;
          if (position < first_row) continue;
          const float* row = logits + r * vocab;
          ll += log_prob(row, row_stats(row, vocab), all[static_cast<size_t>(position + 1)]);
        }
      },
      chunk_rows);
  return ll;
}

MultipleChoiceResult evaluate_multiple_choice(model::LanguageModel& model,
                                              const std::vector<MultipleChoiceItem>& items,
                                              const TextEncoder& encode,
                                              const MultipleChoiceOptions& options) {
  MultipleChoiceResult result;
  std::vector<double> acc, acc_norm;
  for (const auto& item : items) {
    std::vector<double> lls, normalized;
    for (const auto& choice : item.choices) {
      std::string context = item.context;
      std::string continuation = options.target_delimiter + choice;
      size_t keep = context.size();
      while (keep > 0 && is_space(static_cast<unsigned char>(context[keep - 1]))) --keep;
      continuation = context.substr(keep) + continuation;
      context.resize(keep);
      std::vector<int32_t> context_ids, continuation_ids;
      if (context.empty()) {
        if (!options.prefix_token)
          throw_user_error(item.origin, ": the context is empty and the tokenizer has no BOS or "
                           "EOS token to stand for it; give every item a context");
        context_ids = {*options.prefix_token};
        continuation_ids = encode(continuation);
      } else {
        const std::vector<int32_t> whole = encode(context + continuation);
        context_ids = encode(context);
        const size_t split = std::min(context_ids.size(), whole.size());
        continuation_ids.assign(whole.begin() + static_cast<std::ptrdiff_t>(split), whole.end());
      }
      if (continuation_ids.empty())
        throw_user_error(item.origin, ": the choice \"", choice, "\" encodes to no tokens");
      const double ll = continuation_loglikelihood(model, std::move(context_ids),
                                                   continuation_ids, options.chunk_rows);
      lls.push_back(ll);
      normalized.push_back(ll / static_cast<double>(code_points(choice)));
    }
    acc.push_back(static_cast<int64_t>(argmax(lls)) == item.answer ? 1.0 : 0.0);
    acc_norm.push_back(static_cast<int64_t>(argmax(normalized)) == item.answer ? 1.0 : 0.0);
    result.loglikelihoods.push_back(std::move(lls));
  }
  result.items = static_cast<int64_t>(items.size());
  for (double v : acc) result.acc += v;
  for (double v : acc_norm) result.acc_norm += v;
  result.acc /= static_cast<double>(items.size());
  result.acc_norm /= static_cast<double>(items.size());
  result.acc_stderr = mean_stderr(acc);
  result.acc_norm_stderr = mean_stderr(acc_norm);
  return result;
}

}  // namespace refinery::eval
