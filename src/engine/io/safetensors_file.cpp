// Validating safetensors parser (see safetensors_file.hpp for the rules).
//
// Order of checks, each only once the previous ones passed, so that every later step may trust the
// earlier ones: size >= 8 -> header length -> UTF-8 -> JSON -> each entry on its own (dtype, shape,
// offsets, byte size) -> the layout of all entries together (overlap, gap, truncation, trailing bytes).
#include "engine/io/safetensors_file.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <set>
#include <nlohmann/json.hpp>

#include "engine/core/error.hpp"
#include "engine/io/mapped_file.hpp"
#include "engine/io/safetensors_json.hpp"

namespace refinery::io {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; a big-endian host needs byte swapping");

using nlohmann::json;

constexpr const char* kCorruptHint = "the file is corrupt or was not written by a safetensors writer; "
                                     "re-download or re-export it";

uint64_t read_u64_le(const std::byte* p) {
  uint64_t value = 0;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

std::string known_dtypes() {
  std::string names;
  for (int i = 0; i <= static_cast<int>(DType::kC64); ++i) {
    if (!names.empty()) names += ", ";
    names += dtype_name(static_cast<DType>(i));
  }
  return names;
}

// Reads a non-negative JSON integer for `what` ("shape", "data_offsets") of `tensor`.
uint64_t read_unsigned(const std::string& file, const std::string& tensor, const char* what,
                       const json& list, const json& value) {
  if (value.is_number_unsigned()) return value.get<uint64_t>();
  if (value.is_number_integer())
    throw_user_error(file, ": tensor '", tensor, "': ", what, " ", json_brief(list), " has a negative entry (",
                     value.get<int64_t>(), "); entries must be non-negative integers; ", kCorruptHint);
  throw_user_error(file, ": tensor '", tensor, "': ", what, " ", json_brief(list), " has the entry ",
                   json_brief(value), ", which is not a non-negative integer; ", kCorruptHint);
}

TensorEntry parse_entry(const std::string& file, const std::string& name, const json& info) {
  TensorEntry entry;
  entry.name = name;
  if (!info.is_object())
    throw_user_error(file, ": tensor '", name, "': expected an object {\"dtype\", \"shape\", "
                     "\"data_offsets\"}, found ", json_type_name(info), "; ", kCorruptHint);
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!info.contains(field))
      throw_user_error(file, ": tensor '", name, "': missing \"", field, "\"; ", kCorruptHint);

  const json& dtype = info["dtype"];
  if (!dtype.is_string())
    throw_user_error(file, ": tensor '", name, "': dtype must be a string, found ", json_brief(dtype), "; ",
                     kCorruptHint);
  const auto parsed = dtype_from_name(dtype.get_ref<const std::string&>());
  if (!parsed)
    throw_user_error(file, ": tensor '", name, "': unknown dtype ", json_brief(dtype), "; known dtypes: ",
                     known_dtypes(), "; convert the tensor to one of them (or update Refinery)");
  entry.dtype = *parsed;

  const json& shape = info["shape"];
  if (!shape.is_array())
    throw_user_error(file, ": tensor '", name, "': shape must be a list of integers, found ", json_brief(shape),
                     "; ", kCorruptHint);
  uint64_t elements = 1;
  bool overflow = false;
  for (const json& dim : shape) {
    const uint64_t d = read_unsigned(file, name, "shape", shape, dim);
    if (d > static_cast<uint64_t>(INT64_MAX))
      throw_user_error(file, ": tensor '", name, "': shape ", json_brief(shape), " has a dimension above 2^63; ",
                       kCorruptHint);
    entry.shape.push_back(static_cast<int64_t>(d));
    overflow = overflow || __builtin_mul_overflow(elements, d, &elements);
  }
  // A zero dimension makes the product 0 whatever else overflowed; only a true overflow is an error.
  if (overflow && std::find(entry.shape.begin(), entry.shape.end(), 0) == entry.shape.end())
    throw_user_error(file, ": tensor '", name, "': shape ", json_brief(shape),
                     " has more than 2^64 elements (overflow); ", kCorruptHint);
  if (overflow) elements = 0;

  const json& offsets = info["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    throw_user_error(file, ": tensor '", name, "': data_offsets must be [begin, end], found ",
                     json_brief(offsets), "; ", kCorruptHint);
  entry.data_begin = read_unsigned(file, name, "data_offsets", offsets, offsets[0]);
  entry.data_end = read_unsigned(file, name, "data_offsets", offsets, offsets[1]);
  if (entry.data_end < entry.data_begin)
    throw_user_error(file, ": tensor '", name, "': data_offsets [", entry.data_begin, ", ", entry.data_end,
                     "] end before they begin; ", kCorruptHint);

  const uint64_t bits_per_element = dtype_bits(entry.dtype);
  uint64_t bits = 0;
  if (__builtin_mul_overflow(elements, bits_per_element, &bits))
    throw_user_error(file, ": tensor '", name, "': shape ", json_brief(shape), " of ", dtype_name(entry.dtype),
                     " needs more than 2^64 bits (overflow); ", kCorruptHint);
  if (bits % 8 != 0)
    throw_user_error(file, ": tensor '", name, "': ", elements, " elements of ", dtype_name(entry.dtype),
                     " (", bits_per_element, " bits each) do not fill a whole number of bytes; ",
                     kCorruptHint);
  if (bits / 8 != entry.num_bytes())
    throw_user_error(file, ": tensor '", name, "': dtype ", dtype_name(entry.dtype), " and shape ",
                     json_brief(shape), " need ", bits / 8, " bytes, but data_offsets [", entry.data_begin, ", ",
                     entry.data_end, "] span ", entry.num_bytes(), " bytes; ", kCorruptHint);
  return entry;
}

// The tensors, sorted by (begin, end), must tile [0, data_size) exactly.
void check_layout(const std::string& file, const std::vector<TensorEntry>& sorted, uint64_t data_start,
                  uint64_t data_size) {
  uint64_t expected = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry& t : sorted) {
    if (t.data_begin < expected)
      throw_user_error(file, ": tensors '", previous->name, "' (data_offsets [", previous->data_begin, ", ",
                       previous->data_end, "]) and '", t.name, "' (data_offsets [", t.data_begin, ", ",
                       t.data_end, "]) overlap; ", kCorruptHint);
    if (t.data_begin > expected) {
      if (t.data_end > data_size)
        throw_user_error(file, ": tensor '", t.name, "': data_offsets [", t.data_begin, ", ", t.data_end,
                         "] lie outside the data section, which has ", data_size, " bytes (file ",
                         data_start + data_size, " bytes, data starting at byte ", data_start,
                         "), and leave bytes [", expected, ", ", t.data_begin,
                         ") of the data section to no tensor; ", kCorruptHint);
      throw_user_error(file, ": bytes [", expected, ", ", t.data_begin,
                       ") of the data section belong to no tensor (the next tensor, '", t.name,
                       "', starts at ", t.data_begin, "); ", kCorruptHint);
    }
    expected = t.data_end;
    previous = &t;
  }
  if (expected > data_size)
    throw_user_error(file, ": the file is truncated: expected at least ", data_start + expected,
                     " bytes (header ", data_start, " + data ", expected, "), found ", data_start + data_size,
                     "; re-download or re-export it");
  if (expected < data_size)
    throw_user_error(file, ": ", data_size - expected, " bytes after the last tensor belong to no tensor "
                     "(the tensors end at data offset ", expected, ", the data section has ", data_size,
                     " bytes); ", kCorruptHint);
}

}  // namespace

uint64_t TensorEntry::num_elements() const {
  uint64_t n = 1;
  for (const int64_t d : shape) n *= static_cast<uint64_t>(d);  // validated: no overflow
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  auto mapped = MappedFile::open(path);
  const auto bytes = mapped->bytes();
  return parse(bytes, path.string(), std::move(mapped));
}

SafetensorsFile SafetensorsFile::parse(std::span<const std::byte> bytes, std::string display_name,
                                       std::shared_ptr<const void> owner) {
  const std::string& file = display_name;
  const uint64_t size = bytes.size();
  if (size < 8)
    throw_user_error(file, ": not a safetensors file: it has ", size, " bytes, fewer than the 8-byte "
                     "header length that starts every safetensors file; the file is truncated or of "
                     "another format");
  const uint64_t header_len = read_u64_le(bytes.data());
  if (header_len > kMaxSafetensorsHeaderBytes)
    throw_user_error(file, ": header length ", header_len, " exceeds the limit of ",
                     kMaxSafetensorsHeaderBytes, " bytes; ", kCorruptHint);
  if (header_len > size - 8)
    throw_user_error(file, ": header length ", header_len, " reaches past the end of the file: the header "
                     "needs ", 8 + header_len, " bytes but the file has ", size,
                     "; the file is truncated or corrupt, re-download or re-export it");

  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8, header_len);
  const json header = parse_header_json(file, text);

  SafetensorsFile result;
  result.display_name_ = std::move(display_name);
  result.owner_ = std::move(owner);
  result.data_start_ = 8 + header_len;
  result.data_ = bytes.subspan(result.data_start_);
  const std::string& name = result.display_name_;

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      result.metadata_ = parse_string_map(name, "__metadata__", value);
      continue;
    }
    result.tensors_.push_back(parse_entry(name, key, value));
  }
  std::sort(result.tensors_.begin(), result.tensors_.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.data_begin != b.data_begin ? a.data_begin < b.data_begin : a.data_end < b.data_end;
  });
  check_layout(name, result.tensors_, result.data_start_, result.data_.size());
  for (std::size_t i = 0; i < result.tensors_.size(); ++i) result.index_.emplace(result.tensors_[i].name, i);
  return result;
}

const TensorEntry* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorEntry& entry) const {
  REFINERY_CHECK(entry.data_begin <= entry.data_end && entry.data_end <= data_.size(),
                 "tensor '", entry.name, "' is not an entry of ", display_name_);
  return data_.subspan(entry.data_begin, entry.num_bytes());
}

}  // namespace refinery::io
