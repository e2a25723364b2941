#pragma once
// Shared helpers of the prune tests: fixture paths, reference tensors, token streams.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine/io/safetensors_file.hpp"

#include "tests/engine/model/model_test_util.hpp"

namespace refinery::prune::test {

inline std::filesystem::path source_dir() { return std::filesystem::path(REFINERY_SOURCE_DIR); }
inline std::filesystem::path fixture(const std::string& name) {
  return source_dir() / "tests" / "fixtures" / "models" / name;
}
inline std::filesystem::path prune_fixtures() { return source_dir() / "tests" / "fixtures" / "prune"; }
inline std::filesystem::path demo_model() { return source_dir() / "models" / "demo-tiny-deepseek-v3"; }

// `n` token ids in [0, vocab) from a fixed seed.
inline std::vector<int32_t> random_tokens(int64_t n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = dist(rng);
  return t;
}

// reference_logits.safetensors by path: ids (int64 on disk) and f32 tensors.
using ReferenceFile = model::test::Reference;

}  // namespace refinery::prune::test
