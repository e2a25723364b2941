#pragma once
// Small pieces every pass that writes a model directory needs (quantize, prune, distill).

#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

namespace refinery::io {

// The JSON content of `path`; a user error naming the file when it cannot be read or parsed.
nlohmann::json read_json_file(const std::filesystem::path& path);

// Refuses (user errors, before any long work) an output directory `out` for a model made from
// the model directory `source`: empty, a file, the input model itself, inside it or containing
// it, or a non-empty directory while `force` is false. `what` words the messages ("quantized",
// "pruned").
void check_output_model_directory(const std::filesystem::path& source,
                                  const std::filesystem::path& out, bool force,
                                  std::string_view what);

// The directory a path names, absolute and normalized, without a trailing separator.
std::filesystem::path absolute_directory(const std::filesystem::path& path);

// Files of a parent model directory that a pass rewrites (config.json, refinery.json) or that are
// weights in some format (safetensors and their index, .bin, .pt, .gguf, ...): everything else
// (tokenizer files, generation_config.json, README) is copied into a derived model as is.
bool is_weight_or_config_file(const std::filesystem::path& file);

// A model directory built under a temporary name beside `target` (".<name>.tmp-<pid>") and moved
// into place by commit(): `target` is either untouched or complete. An exception before commit()
// removes the temporary directory. commit() replaces an existing `target` (the caller checked it
// may: check_output_model_directory): the old one is moved aside first and removed after.
class StagedModelDirectory {
 public:
  explicit StagedModelDirectory(const std::filesystem::path& target);
  ~StagedModelDirectory();
  StagedModelDirectory(const StagedModelDirectory&) = delete;
  StagedModelDirectory& operator=(const StagedModelDirectory&) = delete;

  const std::filesystem::path& path() const { return temp_; }      // write here
  const std::filesystem::path& target() const { return target_; }  // absolute
  // Copies the parent's files that are neither weights nor config (is_weight_or_config_file).
  void copy_side_files(const std::filesystem::path& parent_dir) const;
  void commit();

 private:
  std::filesystem::path target_, temp_;
  bool committed_ = false;
};

}  // namespace refinery::io
