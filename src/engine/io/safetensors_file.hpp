#pragma once
// Reading safetensors files: a validating parser over bytes in memory (usually an mmap).
//
// Format (https://github.com/huggingface/safetensors): u64 little-endian header length N, then N
// bytes of UTF-8 JSON {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..],
// "data_offsets": [begin, end]}, ...}, then the data section. Offsets are relative to the data
// section, which starts at byte 8 + N.
//
// Everything is validated before any byte is handed out, and a file is accepted exactly when it is
// a well-formed safetensors file (the same rules as the reference implementation): header length
// at most 100 MB and inside the file, UTF-8 JSON object, known dtypes, non-negative shapes whose
// byte size (sub-byte dtypes: elements × bits / 8, which must be whole) equals end − begin, tensors
// that tile the data section from 0 to its end with no overlap and no gap, and nothing after the
// last tensor. Errors are refinery::Error (user kind) naming the file, the tensor and the numbers.
//
// Data alignment: the data section starts at 8 + N; writers pad N to a multiple of 8 (we do), but a
// reader must not assume it — bytes() is a byte span; copy, or check alignment before casting.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/core/dtype.hpp"

namespace refinery::io {

// The header's limit on its JSON length, as in the reference implementation.
inline constexpr std::uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct TensorEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // [] for a scalar; every dimension >= 0
  uint64_t data_begin = 0;     // byte offsets relative to the data section, begin <= end
  uint64_t data_end = 0;

  uint64_t num_bytes() const { return data_end - data_begin; }
  uint64_t num_elements() const;
};

class SafetensorsFile {
 public:
  // Memory-maps `path` and validates it. The mapping lives as long as this object or any copy of
  // keep_alive(). Throws refinery::Error (user kind) naming the file on any defect.
  static SafetensorsFile open(const std::filesystem::path& path);

  // Validates `bytes` (a whole safetensors file) without copying it: the returned object points into
  // `bytes`, which must outlive it unless `owner` keeps them alive. `display_name` names the input
  // in error messages.
  static SafetensorsFile parse(std::span<const std::byte> bytes, std::string display_name,
                               std::shared_ptr<const void> owner = nullptr);

  // Tensors in file order (ascending data_begin).
  const std::vector<TensorEntry>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorEntry* find(std::string_view name) const;
  // The tensor's bytes; `entry` must come from this file's tensors()/find().
  std::span<const std::byte> bytes(const TensorEntry& entry) const;
  // The __metadata__ map (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Owner of the bytes (the mapping for open(), the caller's owner for parse()); hold it to keep
  // zero-copy views valid after this object is gone.
  std::shared_ptr<const void> keep_alive() const { return owner_; }

  const std::string& display_name() const { return display_name_; }
  // 8 + N: where the data section starts in the file.
  uint64_t data_start() const { return data_start_; }
  uint64_t file_size() const { return data_start_ + data_.size(); }

 private:
  SafetensorsFile() = default;

  std::string display_name_;
  std::shared_ptr<const void> owner_;
  std::span<const std::byte> data_;  // the data section
  uint64_t data_start_ = 0;
  std::vector<TensorEntry> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

}  // namespace refinery::io
