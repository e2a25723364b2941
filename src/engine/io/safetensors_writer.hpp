#pragma once
// Writing safetensors files and Hugging Face checkpoints (one file, or shards plus an index).
//
// Files are what the Python `safetensors` library and transformers' save_pretrained write: header
// JSON {"__metadata__": {"format": "pt", ...caller metadata}, name: {"dtype", "shape",
// "data_offsets"}, ...} with tensors laid out in the order given (no gaps), the header padded with
// spaces to a multiple of 8 bytes so the data section is 8-byte aligned. Every file is written
// atomically (AtomicFile: temporary name, fsync, rename, fsync of the directory).
//
// The data of a tensor comes from a span, or from a callback that fills the destination in place:
// the file is memory-mapped for writing, so no copy of the tensor is held (a 10 GB checkpoint is
// written with no 10 GB buffer).

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "engine/core/dtype.hpp"

namespace refinery::io {

struct TensorToWrite {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  // Exactly one of the two: the bytes (little-endian, row-major), or a function that writes
  // exactly num_bytes() bytes into the span it is given (the file's memory).
  std::span<const std::byte> data;
  std::function<void(std::span<std::byte>)> fill;

  // Bytes the tensor occupies (validated by the writers: throws for negative dimensions or a
  // sub-byte dtype whose elements do not fill whole bytes).
  uint64_t num_bytes() const;
};

// Writes one safetensors file. `metadata` joins {"format": "pt"} in __metadata__ (a "format" key in
// it wins). Throws a user error for bad entries (duplicate or empty names, data of the wrong size).
void write_safetensors(const std::filesystem::path& file, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

struct CheckpointWriteOptions {
  // Shard limit in bytes of tensor data, like save_pretrained's max_shard_size (a tensor bigger than
  // the limit gets a shard of its own). transformers defaults to 50 GB nowadays (5 GB before).
  uint64_t max_shard_bytes = 5'000'000'000ULL;
  std::map<std::string, std::string> metadata;  // extra __metadata__ entries for every file
};

struct CheckpointWriteResult {
  std::vector<std::filesystem::path> files;  // shards in order (one: model.safetensors)
  std::filesystem::path index;               // empty when not sharded
  uint64_t total_size = 0;                   // bytes of tensor data (the index's total_size)
};

// Writes the weights of a model directory `dir` (which must exist): model.safetensors when all fits
// in one shard, else model-00001-of-0000N.safetensors ... and model.safetensors.index.json
// ({"metadata": {"total_size": N}, "weight_map": {name: shard}}, sorted keys, 2-space indent, as
// transformers writes it). Shards are split in the order given, greedily, as transformers does.
// A stale file of the other layout (an old index or an old model.safetensors), which would shadow
// or contradict the new weights, is removed after the new files are in place.
CheckpointWriteResult write_checkpoint(const std::filesystem::path& dir, const std::vector<TensorToWrite>& tensors,
                                       const CheckpointWriteOptions& options = {});

// The shard grouping write_checkpoint uses: indices into `tensors`, one list per shard.
std::vector<std::vector<std::size_t>> plan_shards(const std::vector<TensorToWrite>& tensors,
                                                  uint64_t max_shard_bytes);

}  // namespace refinery::io
