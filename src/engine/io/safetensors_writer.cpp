#include "engine/io/safetensors_writer.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/io/atomic_file.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_json.hpp"

namespace refinery::io {
namespace fs = std::filesystem;

namespace {

using TensorRefs = std::vector<const TensorToWrite*>;

// A MAP_SHARED, writable mapping of a file being written (RAII).
class WritableMapping {
 public:
  WritableMapping(const AtomicFile& file, std::size_t size) : size_(size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, file.fd(), 0);
    if (p == MAP_FAILED)
      throw_internal_error(file.destination().string(), ": mmap for writing ", size,
                           " bytes failed: ", std::strerror(errno));
    data_ = static_cast<std::byte*>(p);
  }
  ~WritableMapping() { ::munmap(data_, size_); }
  WritableMapping(const WritableMapping&) = delete;
  WritableMapping& operator=(const WritableMapping&) = delete;

  std::span<std::byte> bytes() { return {data_, size_}; }
  void sync(const fs::path& path) {
    if (::msync(data_, size_, MS_SYNC) != 0)
      throw_internal_error(path.string(), ": msync failed: ", std::strerror(errno));
  }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_;
};

void check_utf8(const fs::path& file, std::string_view what, const std::string& text) {
  if (find_invalid_utf8(text))
    throw_user_error(file.string(), ": ", what, " is not valid UTF-8; safetensors headers are UTF-8 JSON");
}

void validate(const fs::path& file, const TensorRefs& tensors, const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> seen;
  for (const TensorToWrite* t : tensors) {
    if (t->name.empty()) throw_user_error(file.string(), ": a tensor has an empty name; give every tensor a name");
    if (t->name == "__metadata__")
      throw_user_error(file.string(), ": a tensor may not be named __metadata__ (reserved by the format)");
    check_utf8(file, str("tensor name '", t->name, "'"), t->name);
    if (!seen.insert(t->name).second)
      throw_user_error(file.string(), ": tensor '", t->name, "' is given twice; tensor names must be unique");
    const uint64_t n = t->num_bytes();
    if (t->fill && !t->data.empty())
      throw_user_error(file.string(), ": tensor '", t->name, "' has both data and a fill function; give one");
    if (!t->fill && t->data.size() != n)
      throw_user_error(file.string(), ": tensor '", t->name, "': dtype ", dtype_name(t->dtype), " and shape [",
                       t->shape.size(), " dims] need ", n, " bytes, but the data has ", t->data.size());
  }
  for (const auto& [key, value] : metadata) {
    check_utf8(file, str("metadata key '", key, "'"), key);
    check_utf8(file, str("metadata value of '", key, "'"), value);
  }
}

void write_file(const fs::path& file, const TensorRefs& tensors, const std::map<std::string, std::string>& metadata) {
  // Header: __metadata__ first, then the tensors in layout order (ordered_json keeps insertion order).
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  nlohmann::ordered_json meta = nlohmann::ordered_json::object();
  meta["format"] = "pt";
  for (const auto& [key, value] : metadata) meta[key] = value;
  header["__metadata__"] = std::move(meta);
  uint64_t offset = 0;
  for (const TensorToWrite* t : tensors) {
    const uint64_t n = t->num_bytes();
    header[t->name] = {{"dtype", dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data section 8-byte aligned
  const uint64_t header_len = text.size();
  const uint64_t total = 8 + header_len + offset;

  AtomicFile out(file);
  out.reserve(total);
  {
    WritableMapping map(out, total);
    std::span<std::byte> dst = map.bytes();
    std::memcpy(dst.data(), &header_len, 8);  // little-endian host (static_assert in the reader)
    std::memcpy(dst.data() + 8, text.data(), text.size());
    std::byte* cursor = dst.data() + 8 + header_len;
    for (const TensorToWrite* t : tensors) {
      const uint64_t n = t->num_bytes();
      if (t->fill)
        t->fill(std::span<std::byte>(cursor, n));
      else if (n > 0)
        std::memcpy(cursor, t->data.data(), n);
      cursor += n;
    }
    map.sync(file);
  }
  out.commit();
}

void remove_stale(const fs::path& path, const char* why) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return;
  log::info("removing stale ", path.string(), " (", why, ")");
  fs::remove(path, ec);
  if (ec) log::warn("could not remove stale ", path.string(), ": ", ec.message());
}

std::string shard_name(std::size_t index, std::size_t count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05zu-of-%05zu.safetensors", index, count);
  return buf;
}

}  // namespace

uint64_t TensorToWrite::num_bytes() const {
  uint64_t elements = 1;
  bool overflow = false;
  for (const int64_t d : shape) {
    if (d < 0) throw_user_error("tensor '", name, "': negative dimension ", d, " in its shape");
    overflow = overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements);
  }
  uint64_t bits = 0;
  if (overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(dtype_bits(dtype)), &bits))
    throw_user_error("tensor '", name, "': its shape has too many elements (overflow)");
  if (bits % 8 != 0)
    throw_user_error("tensor '", name, "': ", elements, " elements of ", dtype_name(dtype), " (",
                     dtype_bits(dtype), " bits each) do not fill a whole number of bytes; pad the last dimension");
  return bits / 8;
}

void write_safetensors(const fs::path& file, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  TensorRefs refs;
  for (const auto& t : tensors) refs.push_back(&t);
  validate(file, refs, metadata);
  write_file(file, refs, metadata);
}

std::vector<std::vector<std::size_t>> plan_shards(const std::vector<TensorToWrite>& tensors, uint64_t max_shard_bytes) {
  // transformers/huggingface_hub's greedy split: walk in order; a tensor above the limit gets a shard
  // of its own (appended at once, before the shard being filled); otherwise a tensor that would tip
  // the current shard over the limit closes it.
  std::vector<std::vector<std::size_t>> shards;
  std::vector<std::size_t> current;
  uint64_t current_bytes = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t n = tensors[i].num_bytes();
    if (n > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_bytes + n > max_shard_bytes && !current.empty()) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += n;
  }
  if (!current.empty()) shards.push_back(std::move(current));
  return shards;
}

CheckpointWriteResult write_checkpoint(const fs::path& dir, const std::vector<TensorToWrite>& tensors,
                                       const CheckpointWriteOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw_user_error(dir.string(), ": output directory does not exist; create it first");
  TensorRefs all;
  for (const auto& t : tensors) all.push_back(&t);
  validate(dir, all, options.metadata);

  CheckpointWriteResult result;
  for (const auto& t : tensors) result.total_size += t.num_bytes();
  const auto plan = plan_shards(tensors, options.max_shard_bytes);
  if (plan.size() <= 1) {
    const fs::path file = dir / kSafetensorsSingleName;
    write_file(file, all, options.metadata);
    result.files.push_back(file);
    remove_stale(dir / kSafetensorsIndexName, "this checkpoint is now a single file");
    return result;
  }

  nlohmann::json weight_map = nlohmann::json::object();
  std::set<std::string> new_shards;
  for (std::size_t s = 0; s < plan.size(); ++s) {
    const std::string name = shard_name(s + 1, plan.size());
    TensorRefs refs;
    for (const std::size_t i : plan[s]) {
      refs.push_back(&tensors[i]);
      weight_map[tensors[i].name] = name;
    }
    write_file(dir / name, refs, options.metadata);
    result.files.push_back(dir / name);
    new_shards.insert(name);
  }
  // The index goes last: until it is renamed into place, a reader sees the previous checkpoint.
  const nlohmann::json index = {{"metadata", {{"total_size", result.total_size}}}, {"weight_map", weight_map}};
  result.index = dir / kSafetensorsIndexName;
  write_file_atomically(result.index, index.dump(2) + "\n");

  // model.safetensors would shadow the index (readers prefer it); shards of an older save with
  // another shard count would be dead weight.
  remove_stale(dir / kSafetensorsSingleName, "this checkpoint is now sharded");
  static const std::regex kShardPattern(R"(model-\d{5}-of-\d{5}\.safetensors)");
  std::vector<fs::path> stale;  // collected first: removing while iterating is unspecified
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (std::regex_match(name, kShardPattern) && new_shards.count(name) == 0) stale.push_back(it->path());
  }
  for (const auto& path : stale) remove_stale(path, "a shard of an older save");
  return result;
}

}  // namespace refinery::io
