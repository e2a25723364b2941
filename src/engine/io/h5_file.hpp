#pragma once
// Thin RAII wrappers over the HDF5 C API, for the token datasets and logit caches of DESIGN §5.
//
// What this layer gives its users:
//  - H5Handle: one owned hid_t, closed with the close function of its kind (file, dataset, ...).
//  - Errors: HDF5's automatic printing of its error stack to stderr is switched off (per thread)
//  and
//    a failing call becomes a refinery::Error that names the file and the object and carries the
//    messages of the HDF5 error stack.
//  - Chunked, extendable datasets of rank >= 1 whose first dimension grows: [rows] or [rows, k].
//    Element types are refinery DTypes: u8/i8/u16/i16/u32/i32/u64/i64/f16/f32/f64, stored
//    little-endian. f16 is the IEEE half type that h5py reads as numpy float16.
//  - Appending rows, writing/reading row ranges, shrinking (so a resumable writer can cut a file
//    back to its last complete chunk), and scalar string/int attributes on files and datasets.
//
// Not thread safe: Debian's HDF5 is the serial build, so one thread at a time uses the library.
// Files: h5_file.cpp (handles, errors, types, attributes), h5_dataset.cpp (H5File, H5Dataset).

#include <hdf5.h>

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"

namespace refinery::io {

// One owned HDF5 identifier and the function that closes it (H5Fclose, H5Dclose, H5Sclose, ...).
class H5Handle {
 public:
  using CloseFn = herr_t (*)(hid_t);

  H5Handle() = default;
  H5Handle(hid_t id, CloseFn close) : id_(id), close_(close) {}
  ~H5Handle() { reset(); }
  H5Handle(const H5Handle&) = delete;
  H5Handle& operator=(const H5Handle&) = delete;
  H5Handle(H5Handle&& other) noexcept : id_(other.id_), close_(other.close_) {
    other.id_ = H5I_INVALID_HID;
  }
  H5Handle& operator=(H5Handle&& other) noexcept;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and returns HDF5's status (negative on failure); the handle is empty afterwards.
  herr_t close();
  // Closes, ignoring failures (the destructor's path).
  void reset() { (void)close(); }

 private:
  hid_t id_ = H5I_INVALID_HID;
  CloseFn close_ = nullptr;
};

// Switches off HDF5's automatic error printing for the calling thread (idempotent, cheap).
void h5_silence_errors();
// The current HDF5 error stack as one line ("unable to open file <- file signature not found"),
// then clears the stack. Empty when the stack is empty.
std::string h5_take_error_stack();
// Throws refinery::Error of `kind`: "<file> <object>: <what>; HDF5 says: <HDF5 messages>".
[[noreturn]] void throw_h5_error(ErrorKind kind, const std::string& file, const std::string& object,
                                 const std::string& what);

// Throw throw_h5_error(kind, ...) when an HDF5 call failed (negative id / status); for code that
// calls the C API directly. h5_check_id wraps a good id in a handle closed by `close`.
H5Handle h5_check_id(hid_t id, H5Handle::CloseFn close, ErrorKind kind, const std::string& file,
                     const std::string& object, const std::string& what);
void h5_check(herr_t status, ErrorKind kind, const std::string& file, const std::string& object,
              const std::string& what);

// Type mapping. File types are little-endian standard types; memory types are native.
H5Handle h5_file_type(DType dtype);
H5Handle h5_memory_type(DType dtype);
// The DType a stored HDF5 type corresponds to; throws a user error naming file/object and the found
// type when it is not one we handle (strings, compounds, bf16, big ints, ...).
DType h5_dtype_of(hid_t type, const std::string& file, const std::string& object);
// numpy-style name of a dtype: "uint32", "float16", ...
std::string h5_dtype_label(DType dtype);
// A short description for messages: "uint32", "float16", "string", "compound", ...
std::string h5_describe_type(hid_t type);
// Whether reading/writing `from` elements as `to` loses nothing (same type, integer widening that
// keeps every value, float widening). The dataset read/write functions accept only such pairs.
bool h5_lossless_conversion(DType from, DType to);

template <typename T>
constexpr DType h5_dtype_for() {
  if constexpr (std::is_same_v<T, uint8_t>)
    return DType::kU8;
  else if constexpr (std::is_same_v<T, int8_t>)
    return DType::kI8;
  else if constexpr (std::is_same_v<T, uint16_t>)
    return DType::kU16;
  else if constexpr (std::is_same_v<T, int16_t>)
    return DType::kI16;
  else if constexpr (std::is_same_v<T, uint32_t>)
    return DType::kU32;
  else if constexpr (std::is_same_v<T, int32_t>)
    return DType::kI32;
  else if constexpr (std::is_same_v<T, uint64_t>)
    return DType::kU64;
  else if constexpr (std::is_same_v<T, int64_t>)
    return DType::kI64;
  else if constexpr (std::is_same_v<T, float>)
    return DType::kF32;
  else if constexpr (std::is_same_v<T, double>)
    return DType::kF64;
  else
    static_assert(sizeof(T) == 0, "no HDF5 mapping for this element type (f16: use the raw API)");
}

// A file or a dataset: something that has a name and carries attributes.
class H5Object {
 public:
  const std::string& file_path() const { return file_path_; }
  // "/" for the file, "/tokens" for a dataset.
  const std::string& name() const { return name_; }
  hid_t id() const { return handle_.get(); }
  bool is_open() const { return handle_.valid(); }

  bool has_attribute(const std::string& attr) const;
  // Scalar, variable-length UTF-8 string (what h5py writes for a Python str, and reads back as
  // str). Replaces an existing attribute of the same name.
  void set_string_attribute(const std::string& attr, const std::string& value);
  // Scalar int64 (what h5py writes for a Python int).
  void set_int_attribute(const std::string& attr, int64_t value);
  // Reads a scalar string attribute (variable or fixed length). User error when it is missing or
  // not a string.
  std::string string_attribute(const std::string& attr) const;
  // Reads a scalar integer attribute of any integer type. User error when missing, not an integer,
  // or beyond int64.
  int64_t int_attribute(const std::string& attr) const;

 protected:
  H5Object() = default;
  H5Object(H5Handle handle, std::string file_path, std::string name)
      : handle_(std::move(handle)), file_path_(std::move(file_path)), name_(std::move(name)) {}
  [[noreturn]] void fail(ErrorKind kind, const std::string& what) const;
  std::string attribute_context(const std::string& attr) const;

  H5Handle handle_;
  std::string file_path_;
  std::string name_;

 private:
  // An open attribute and its stored type.
  struct OpenAttribute {
    H5Handle attr;
    H5Handle type;
  };
  // Opens attribute `attr`, which must exist and hold one element of type class `type_class`;
  // user error otherwise ("... should be <expected>, found ...", e.g. expected = "one string").
  OpenAttribute open_scalar_attribute(const std::string& attr, H5T_class_t type_class,
                                      const char* expected) const;
  // Creates attribute `attr` as a scalar of stored type `type`, deleting an existing one first.
  H5Handle create_scalar_attribute(const std::string& attr, hid_t type);
};

// How a new dataset is laid out: [rows, row_shape...], first dimension unlimited, chunked by rows.
struct H5DatasetLayout {
  std::vector<uint64_t> row_shape;  // {} -> 1-D [rows]; {k} -> 2-D [rows, k]
  uint64_t chunk_rows = 0;          // rows per chunk; 0 picks chunks of about 1 MiB
  int deflate_level = 0;            // 1..9: compress with deflate when the filter is available
  bool shuffle = false;             // byte shuffle before deflate (helps integer ids)
};

class H5Dataset : public H5Object {
 public:
  H5Dataset() = default;

  DType dtype() const;  // user error when the stored type is not one we handle
  std::string type_description() const;
  std::vector<uint64_t> shape() const;
  int rank() const;
  uint64_t rows() const;        // shape[0]
  uint64_t row_size() const;    // elements per row: product of shape[1:]
  uint64_t chunk_rows() const;  // rows per chunk; 0 when the dataset is not chunked
  bool is_extendable() const;   // the first dimension is unlimited
  bool is_compressed() const;   // a deflate filter is in its pipeline

  // Appends `rows` rows from `data` (row-major, memory type `mem_dtype`, which must convert
  // losslessly to the stored type; f16 bit patterns pass as DType::kF16 over uint16_t).
  void append(const void* data, DType mem_dtype, uint64_t rows);
  template <typename T>
  void append(std::span<const T> values) {
    append(values.data(), h5_dtype_for<T>(), checked_rows(values.size()));
  }
  // Writes rows [begin, begin + rows), growing the dataset when they reach past its end.
  void write_rows(uint64_t begin, const void* data, DType mem_dtype, uint64_t rows);
  // Reads rows [begin, begin + count) into `out` (count * row_size elements of `mem_dtype`, to
  // which the stored type must convert losslessly, e.g. f16 -> f32). User error when out of range.
  void read_rows(uint64_t begin, uint64_t count, DType mem_dtype, void* out) const;
  template <typename T>
  std::vector<T> read_rows(uint64_t begin, uint64_t count) const {
    std::vector<T> out(static_cast<size_t>(count * row_size()));
    read_rows(begin, count, h5_dtype_for<T>(), out.data());
    return out;
  }
  template <typename T>
  std::vector<T> read_all() const {
    return read_rows<T>(0, rows());
  }
  // Sets the number of rows (shrinks or grows; grown rows read as zero). Extendable datasets only.
  void resize(uint64_t rows);

 private:
  friend class H5File;
  H5Dataset(H5Handle handle, std::string file_path, std::string name)
      : H5Object(std::move(handle), std::move(file_path), std::move(name)) {}
  uint64_t checked_rows(size_t elements) const;
  void transfer_check(DType mem_dtype, bool writing) const;
};

class H5File : public H5Object {
 public:
  H5File() = default;
  // Creates (truncating an existing file). Internal error when the file cannot be created.
  static H5File create(const std::string& path);
  // Opens an existing file; user error naming the path when missing or not HDF5 (or truncated).
  static H5File open(const std::string& path, bool writable = false);

  // Whether `path` names an object (intermediate groups may be missing: then false).
  bool exists(const std::string& path) const;
  // Whether `path` names a dataset.
  bool is_dataset(const std::string& path) const;
  // Creates an extendable, chunked dataset with 0 rows; intermediate groups are created.
  H5Dataset create_dataset(const std::string& path, DType dtype, const H5DatasetLayout& layout);
  // Opens a dataset; user error naming the file when it is missing or not a dataset.
  H5Dataset open_dataset(const std::string& path) const;
  // Flushes everything written so far to disk.
  void flush();
  // Closes the file, reporting failure (the destructor closes silently). Datasets opened from it
  // must be closed (destroyed) first, or the file stays open until they are.
  void close();

 private:
  H5File(H5Handle handle, std::string file_path)
      : H5Object(std::move(handle), std::move(file_path), "/") {}
};

// Whether the deflate filter can compress in this HDF5 build.
bool h5_deflate_available();

}  // namespace refinery::io
