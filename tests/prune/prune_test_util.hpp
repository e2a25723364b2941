#pragma once
// Shared helpers of the prune tests: fixture paths, reference tensors, token streams.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine/io/safetensors_file.hpp"

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

// reference_logits.safetensors of a fixture: ids (int64 on disk) and f32 tensors.
struct ReferenceFile {
  io::SafetensorsFile file;
  explicit ReferenceFile(const std::filesystem::path& path) : file(io::SafetensorsFile::open(path)) {}
  bool has(const std::string& t) const { return file.find(t) != nullptr; }
  std::vector<float> floats(const std::string& t) const {
    const auto* e = file.find(t);
    std::vector<float> v(static_cast<std::size_t>(e->num_elements()));
    convert_to_f32(e->dtype, file.bytes(*e).data(), v.data(), v.size());
    return v;
  }
  std::vector<int32_t> ids(const std::string& t) const {
    const auto* e = file.find(t);
    std::vector<int64_t> v(static_cast<std::size_t>(e->num_elements()));
    std::memcpy(v.data(), file.bytes(*e).data(), v.size() * sizeof(int64_t));
    return std::vector<int32_t>(v.begin(), v.end());
  }
};

}  // namespace refinery::prune::test
