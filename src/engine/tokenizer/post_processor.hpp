#pragma once
// Post-processors of tokenizer.json ("post_processor"): what encode(text, add_special_tokens=true)
// adds around the ids of a single sequence. Supported types: TemplateProcessing (the "single"
// template), ByteLevel (adds nothing; it only trims offsets), BertProcessing ([CLS] A [SEP]),
// RobertaProcessing (<s> A </s>) and Sequence of those. Pair templates are not used.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "engine/tokenizer/json_where.hpp"

namespace refinery::tokenizer {

class PostProcessor {
 public:
  PostProcessor() = default;
  static PostProcessor from_json(const nlohmann::json& spec, const JsonWhere& where);

  // Wraps `ids` with the special tokens of the single-sequence template.
  void apply(std::vector<int32_t>& ids) const;
  const std::vector<int32_t>& prefix() const { return prefix_; }
  const std::vector<int32_t>& suffix() const { return suffix_; }

 private:
  void add_from_json(const nlohmann::json& spec, const JsonWhere& where);

  std::vector<int32_t> prefix_, suffix_;
};

}  // namespace refinery::tokenizer
