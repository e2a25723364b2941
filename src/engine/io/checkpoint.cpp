#include "engine/io/checkpoint.hpp"

#include <algorithm>
#include <set>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/io/mapped_file.hpp"
#include "engine/io/safetensors_json.hpp"

namespace refinery::io {
namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// What a directory holds that looks like weights, for the "nothing found" message.
std::string describe_weight_files(const fs::path& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (ends_with(name, ".safetensors") || ends_with(name, ".bin") || ends_with(name, ".pt") ||
        ends_with(name, ".gguf") || ends_with(name, ".index.json"))
      found.push_back(name);
  }
  if (found.empty()) return "it holds no weight files";
  std::sort(found.begin(), found.end());
  std::string list;
  for (const auto& name : found) list += (list.empty() ? "" : ", ") + name;
  return "it holds " + list;
}

}  // namespace

Checkpoint Checkpoint::open(const fs::path& dir_or_file) {
  std::error_code ec;
  if (fs::is_directory(dir_or_file, ec)) {
    const fs::path single = dir_or_file / kSafetensorsSingleName;
    const fs::path index = dir_or_file / kSafetensorsIndexName;
    const bool has_single = fs::exists(single, ec);
    const bool has_index = fs::exists(index, ec);
    if (has_single && has_index)
      log::warn(dir_or_file.string(), ": has both ", kSafetensorsSingleName, " and ", kSafetensorsIndexName,
                "; using ", kSafetensorsSingleName, " (as transformers does)");
    if (has_single) return open_single(single);
    if (has_index) return open_index(index);
    throw_user_error(dir_or_file.string(), ": no safetensors weights found: looked for ",
                     kSafetensorsSingleName, " and ", kSafetensorsIndexName, "; ",
                     describe_weight_files(dir_or_file),
                     ". Give a Hugging Face model directory saved with safetensors (convert .bin "
                     "weights with save_pretrained(..., safe_serialization=True))");
  }
  if (!fs::exists(dir_or_file, ec))
    throw_user_error(dir_or_file.string(), ": no such file or directory; give a model directory, a "
                     ".safetensors file or a model.safetensors.index.json");
  if (ends_with(dir_or_file.filename().string(), ".index.json")) return open_index(dir_or_file);
  return open_single(dir_or_file);
}

Checkpoint Checkpoint::open_single(const fs::path& file) {
  Checkpoint checkpoint;
  checkpoint.source_ = file;
  checkpoint.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(file)));
  const SafetensorsFile* f = checkpoint.files_.back().get();
  for (const TensorEntry& entry : f->tensors()) checkpoint.located_.emplace(entry.name, Located{f, &entry});
  return checkpoint;
}

Checkpoint Checkpoint::open_index(const fs::path& index) {
  const std::string index_name = index.string();
  const auto mapped = MappedFile::open(index);
  if (mapped->size() > kMaxSafetensorsHeaderBytes)
    throw_user_error(index_name, ": index is ", mapped->size(), " bytes, more than the limit of ",
                     kMaxSafetensorsHeaderBytes, "; the file is corrupt");
  const std::string_view text(reinterpret_cast<const char*>(mapped->bytes().data()), mapped->size());
  const nlohmann::json root = parse_json_object(index_name, "index", text);
  if (!root.contains("weight_map"))
    throw_user_error(index_name, ": index has no \"weight_map\" (tensor name -> shard file); the file "
                     "is corrupt or not a safetensors index, re-download or re-export the model");
  const auto weight_map = parse_string_map(index_name, "weight_map", root["weight_map"]);
  if (weight_map.empty())
    throw_user_error(index_name, ": index has an empty weight_map; re-export the model");

  // Shards in name order, each opened once; a shard name must be a plain file name in the index's
  // directory (an index must not make us read files elsewhere).
  std::map<std::string, std::vector<std::string>> listed;  // shard -> tensors the index puts there
  for (const auto& [tensor, shard] : weight_map) {
    const fs::path shard_path(shard);
    if (shard.empty() || shard_path.has_parent_path() || shard == "." || shard == "..")
      throw_user_error(index_name, ": weight_map puts tensor '", tensor, "' in \"", shard,
                       "\", which is not a file name in the index's directory; re-export the model");
    listed[shard].push_back(tensor);
  }

  Checkpoint checkpoint;
  checkpoint.source_ = index;
  const fs::path dir = index.parent_path();
  for (const auto& [shard, tensors] : listed) {
    const fs::path shard_path = dir / shard;
    std::error_code ec;
    if (!fs::exists(shard_path, ec))
      throw_user_error(shard_path.string(), ": shard file is missing; the index ", index_name,
                       " lists ", tensors.size(), " tensors in it (e.g. '", tensors.front(),
                       "'); download or copy the missing shard");
    checkpoint.files_.push_back(std::make_unique<SafetensorsFile>(SafetensorsFile::open(shard_path)));
    const SafetensorsFile* file = checkpoint.files_.back().get();
    for (const std::string& tensor : tensors)
      if (file->find(tensor) == nullptr)
        throw_user_error(index_name, ": tensor '", tensor, "' is listed in shard ", shard,
                         " but that shard does not contain it; the index and the shards do not belong "
                         "together, re-download or re-export the model");
    for (const TensorEntry& entry : file->tensors()) {
      const auto [it, inserted] = checkpoint.located_.emplace(entry.name, Located{file, &entry});
      if (!inserted)
        throw_user_error(index_name, ": tensor '", entry.name, "' is present in two shards, ",
                         it->second.file->display_name(), " and ", file->display_name(),
                         "; remove the stale shard or re-export the model");
      const auto listed_shard = weight_map.find(entry.name);
      if (listed_shard == weight_map.end())
        log::debug(file->display_name(), ": tensor '", entry.name, "' is not listed in ", index_name);
    }
  }

  // total_size is informative (tools disagree on it for shared storage): a mismatch only warns.
  if (root.contains("metadata") && root["metadata"].is_object() && root["metadata"].contains("total_size")) {
    const auto& total = root["metadata"]["total_size"];
    if (total.is_number_unsigned() && total.get<uint64_t>() != checkpoint.total_bytes())
      log::warn(index_name, ": metadata.total_size says ", total.get<uint64_t>(), " bytes but the shards hold ",
                checkpoint.total_bytes(), " bytes of tensors");
  }
  return checkpoint;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> result;
  result.reserve(located_.size());
  for (const auto& [name, located] : located_) result.push_back(name);
  return result;  // std::map iterates in sorted order
}

std::optional<Checkpoint::Located> Checkpoint::find(std::string_view name) const {
  const auto it = located_.find(name);
  if (it == located_.end()) return std::nullopt;
  return it->second;
}

Checkpoint::Located Checkpoint::at(std::string_view name) const {
  const auto it = located_.find(name);
  if (it == located_.end())
    throw_user_error(source_.string(), ": has no tensor '", name, "' (it has ", located_.size(),
                     " tensors); check the tensor name and that the model is of the expected family");
  return it->second;
}

std::span<const std::byte> Checkpoint::bytes(std::string_view name) const {
  const Located located = at(name);
  return located.file->bytes(*located.entry);
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, located] : located_) total += located.entry->num_bytes();
  return total;
}

}  // namespace refinery::io
