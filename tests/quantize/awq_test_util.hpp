#pragma once
// Shared by the AWQ tests: the shipped teacher and windows of the bundled validation sample.
#include <memory>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"
#include "engine/eval/token_stream.hpp"

namespace refinery::quantize::awq_test_util {

inline const std::string kTeacher = std::string(REFINERY_SOURCE_DIR) + "/models/refinery-teacher-moe";
constexpr int64_t kLength = 64;

// `windows` windows of kLength tokens of the bundled validation sample, from window `first` on.
inline std::vector<int32_t> sample_windows(int64_t first, int64_t windows) {
  static const std::vector<int32_t> stream =
      eval::read_token_stream({std::string(REFINERY_SOURCE_DIR) + "/data/sample/valid-200k.jsonl"},
                              eval::lazy_tokenizer_encoder(kTeacher, true))
          .tokens;
  const auto begin = stream.begin() + first * kLength;
  return {begin, begin + windows * kLength};
}

inline std::shared_ptr<backend::Backend> cpu() { return backend::make_cpu_backend(0); }

}  // namespace refinery::quantize::awq_test_util
