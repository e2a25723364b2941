#pragma once
// Test doubles for the eval tests: the "table model" of tests/fixtures/eval/make_eval_fixture.py,
//   logits[p, v] = table[t[p], v] + pos_scale * min(p, pos_cap) * bias[v]
// (exact in float32), delivered in deliberately small chunks; and the fixture's byte tokenizer.

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/model/language_model.hpp"

namespace refinery::eval::testing {

inline nlohmann::json load_eval_fixture() {
  std::ifstream in(std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/eval/eval_fixture.json");
  return nlohmann::json::parse(in);
}

class TableModel : public model::LanguageModel {
 public:
  TableModel(const nlohmann::json& spec, int64_t vocab, int64_t chunk = 5, int64_t max_len = 64)
      : vocab_(vocab), chunk_(chunk), max_len_(max_len) {
    for (const auto& row : spec["table"])
      for (const auto& v : row) table_.push_back(v.get<float>());
    for (const auto& v : spec["bias"]) bias_.push_back(v.get<float>());
    pos_scale_ = spec["pos_scale"].get<float>();
    pos_cap_ = spec["pos_cap"].get<int64_t>();
  }
  int64_t vocab_size() const override { return vocab_; }
  int64_t max_sequence_length() const override { return max_len_; }
  void score(std::span<const int32_t> tokens, const model::LogitsConsumer& consume,
             int64_t max_chunk_rows) override {
    ++calls;
    const int64_t n = static_cast<int64_t>(tokens.size());
    const int64_t step = std::min(chunk_, max_chunk_rows);
    std::vector<float> rows;
    for (int64_t first = 0; first < n; first += step) {
      const int64_t count = std::min(step, n - first);
      rows.assign(static_cast<size_t>(count * vocab_), 0.0f);
      for (int64_t r = 0; r < count; ++r) {
        const int64_t p = first + r;
        const float pos = pos_scale_ * static_cast<float>(std::min(p, pos_cap_));
        for (int64_t v = 0; v < vocab_; ++v)
          rows[static_cast<size_t>(r * vocab_ + v)] =
              table_[static_cast<size_t>(tokens[static_cast<size_t>(p)] * vocab_ + v)] +
              pos * bias_[static_cast<size_t>(v)];
      }
      consume(first, rows.data(), count);
    }
  }
  int calls = 0;

 private:
  int64_t vocab_, chunk_, max_len_;
  std::vector<float> table_, bias_;
  float pos_scale_ = 0;
  int64_t pos_cap_ = 0;
};

// The fixture's tokenizer: one id per UTF-8 byte, id = byte % vocab.
inline std::vector<int32_t> byte_encode(std::string_view text, int64_t vocab) {
  std::vector<int32_t> ids;
  for (unsigned char c : text) ids.push_back(static_cast<int32_t>(c % vocab));
  return ids;
}

inline std::vector<int32_t> fixture_tokens(const nlohmann::json& f) {
  return f["tokens"].get<std::vector<int32_t>>();
}

}  // namespace refinery::eval::testing
