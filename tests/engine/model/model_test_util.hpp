#pragma once
// Shared helpers of the engine model tests: fixture paths, reference tensors, a recording observer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/model/taps.hpp"
#include "engine/model/transformer.hpp"

namespace refinery::model::test {

inline std::filesystem::path fixtures_dir() {
  return std::filesystem::path(REFINERY_SOURCE_DIR) / "tests" / "fixtures" / "models";
}

inline std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(fixtures_dir()))
    if (e.is_directory()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

inline std::unique_ptr<Transformer> load_fixture(const std::string& name) {
  return Transformer::load(fixtures_dir() / name, backend::make_cpu_backend());
}

// A reference tensor of reference_logits.safetensors as f32 values (ids as int32).
struct Reference {
  io::SafetensorsFile file;
  // The reference of fixture `name`, or any reference_logits.safetensors by path.
  explicit Reference(const std::string& name)
      : file(io::SafetensorsFile::open(fixtures_dir() / name / "reference_logits.safetensors")) {}
  explicit Reference(const char* name) : Reference(std::string(name)) {}
  explicit Reference(const std::filesystem::path& path) : file(io::SafetensorsFile::open(path)) {}
  bool has(const std::string& t) const { return file.find(t) != nullptr; }
  std::vector<int64_t> shape(const std::string& t) const { return file.find(t)->shape; }
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

inline std::vector<float> values(const Tensor& t) {
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  convert_to_f32(t.dtype(), t.data(), v.data(), v.size());
  return v;
}

inline double max_abs(const std::vector<float>& a) {
  double m = 0;
  for (float x : a) m = std::max(m, double(std::abs(x)));
  return m;
}

inline double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(double(a[i]) - b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

// Records copies of every delivered tensor whose name passes `filter` (all when empty).
class Recorder : public TapObserver {
 public:
  std::vector<std::string> order;
  std::map<std::string, Tensor> seen;
  std::function<bool(std::string_view)> filter;
  bool wants(std::string_view name) const override { return !filter || filter(name); }
  void observe(std::string_view name, const Tensor& value) override {
    order.emplace_back(name);
    seen[std::string(name)] = value.clone();
  }
};

}  // namespace refinery::model::test
