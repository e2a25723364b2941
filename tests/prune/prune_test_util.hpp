#pragma once
// Shared helpers of the prune tests: fixture paths, reference tensors, token streams.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend/backend.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/model/transformer.hpp"

#include "tests/engine/model/model_test_util.hpp"

namespace refinery::prune::test {

inline std::filesystem::path source_dir() { return std::filesystem::path(REFINERY_SOURCE_DIR); }
inline std::filesystem::path fixture(const std::string& name) {
  return source_dir() / "tests" / "fixtures" / "models" / name;
}
inline std::filesystem::path prune_fixtures() { return source_dir() / "tests" / "fixtures" / "prune"; }
inline std::filesystem::path demo_model() { return source_dir() / "models" / "demo-tiny-deepseek-v3"; }

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

// The CPU engine's logits [ids, vocab] (row-major) of the model in `dir`.
inline std::vector<float> logits_of(const std::filesystem::path& dir, const std::vector<int32_t>& ids) {
  auto m = model::Transformer::load(dir, backend::make_cpu_backend(1));
  const Tensor t = m->forward(ids);
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

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
