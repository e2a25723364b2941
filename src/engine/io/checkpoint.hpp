#pragma once
// The weights of a Hugging Face model directory, one file or sharded, as one name -> tensor map.
//
// Layouts (as transformers' save_pretrained writes them):
//   DIR/model.safetensors                                   everything in one file
//   DIR/model.safetensors.index.json + DIR/<shard files>    {"metadata": {"total_size": N, ...},
//                                                            "weight_map": {tensor name: shard file}}
// When both exist, model.safetensors wins (as in transformers) and a warning is logged. Every shard
// is memory-mapped and validated on open(). Errors name the index, the shard and the tensor: a shard
// file that is missing, a tensor listed in the index but absent from its shard, a tensor present in
// two shards, a malformed index. A tensor present in a shard but not listed in the index is still
// served (transformers loads whole shards too) and logged at debug level.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/io/safetensors_file.hpp"

namespace refinery::io {

inline constexpr const char* kSafetensorsSingleName = "model.safetensors";
inline constexpr const char* kSafetensorsIndexName = "model.safetensors.index.json";

class Checkpoint {
 public:
  // `dir_or_file`: a model directory, a *.safetensors file or a *.safetensors.index.json file.
  static Checkpoint open(const std::filesystem::path& dir_or_file);

  struct Located {
    const SafetensorsFile* file;
    const TensorEntry* entry;
  };

  // All tensor names, sorted.
  std::vector<std::string> names() const;
  std::size_t size() const { return located_.size(); }
  std::optional<Located> find(std::string_view name) const;
  // Like find, but throws a user error naming the tensor and the checkpoint when it is absent.
  Located at(std::string_view name) const;
  std::span<const std::byte> bytes(std::string_view name) const;

  // The files, in shard order (one for a single-file checkpoint).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // The directory, index or file that was opened (for messages).
  const std::filesystem::path& source() const { return source_; }
  // Sum of all tensors' bytes (what the index's total_size should say).
  uint64_t total_bytes() const;

 private:
  static Checkpoint open_single(const std::filesystem::path& file);
  static Checkpoint open_index(const std::filesystem::path& index);

  std::filesystem::path source_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;  // unique_ptr: Located pointers stay valid
  std::map<std::string, Located, std::less<>> located_;
};

}  // namespace refinery::io
