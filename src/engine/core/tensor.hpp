#pragma once
// Tensor (DESIGN §3): a dtype, a shape, contiguous row-major elements on one device, and a
// reference-counted Storage that the tensor views at a byte offset.
//
// A Tensor is a handle: copying one shares its storage (like a shared_ptr), and views (slice, view,
// view_bytes, select) share it too. Nothing here copies element data unless its name says so
// (clone, to, to_f32, copy_from). Storage is one of
//   - an owned host buffer (64-byte aligned, from empty/zeros on kCPU),
//   - a device allocation (device_malloc, freed by RAII; kCUDA),
//   - an external region (e.g. a memory-mapped file), kept alive by a shared_ptr owner and
//     usually read-only.
// Read-only storage can be read through data<T>() but mutable_data<T>() throws.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"

namespace refinery {

enum class Device : uint8_t { kCPU, kCUDA };

// "cpu" or "cuda".
std::string_view device_name(Device device);

// A contiguous region of bytes on one device. Created through the factories; never copied.
class Storage {
 public:
  // A new host buffer of `bytes` bytes, 64-byte aligned, uninitialized.
  static std::shared_ptr<Storage> allocate_host(std::size_t bytes);
  // A new device buffer (device_malloc); throws a user error in a build without CUDA.
  static std::shared_ptr<Storage> allocate_device(std::size_t bytes);
  // An external region that `owner` keeps alive (the owner may be null when the caller guarantees
  // the region outlives every tensor that views it, e.g. static data in tests).
  static std::shared_ptr<Storage> external(void* data, std::size_t bytes, Device device,
                                           std::shared_ptr<const void> owner, bool read_only);

  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();

  std::byte* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  bool read_only() const { return read_only_; }

 private:
  enum class Kind { kHost, kDevice, kExternal };
  Storage(Kind kind, std::byte* data, std::size_t bytes, Device device, bool read_only,
          std::shared_ptr<const void> owner);

  Kind kind_;
  std::byte* data_;
  std::size_t bytes_;
  Device device_;
  bool read_only_;
  std::shared_ptr<const void> owner_;  // external storage only
};

// Maps a C++ element type to the dtypes data<T>() accepts for it (see Tensor::data).
template <typename T>
bool dtype_matches(DType dtype);

class Tensor {
 public:
  // An undefined tensor (defined() is false); most accessors throw on it.
  Tensor() = default;

  // ---- factories ----
  // Uninitialized contents.
  static Tensor empty(DType dtype, std::vector<int64_t> shape, Device device = Device::kCPU);
  static Tensor zeros(DType dtype, std::vector<int64_t> shape, Device device = Device::kCPU);
  // A tensor over memory someone else owns (e.g. a region of a memory-mapped file). `owner` keeps
  // that memory alive for as long as any tensor views it. The region must hold
  // dtype_bytes_for(dtype, numel) bytes; it need not be aligned (data<T>() checks alignment).
  static Tensor from_external(DType dtype, std::vector<int64_t> shape, const void* data,
                              std::shared_ptr<const void> owner, bool read_only = true,
                              Device device = Device::kCPU);
  // A new CPU tensor holding a copy of `src` (dtype_bytes_for(dtype, numel) bytes).
  static Tensor copy_of(DType dtype, std::vector<int64_t> shape, const void* src);

  // ---- properties ----
  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t ndim() const { return static_cast<int64_t>(shape_.size()); }
  // Size of dimension `dim`; negative counts from the end (-1 is the last). Throws if out of range.
  int64_t size(int64_t dim) const;
  int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return nbytes_; }
  Device device() const;
  bool is_read_only() const;
  // Byte offset of this tensor's first element inside its storage.
  std::size_t storage_offset() const { return offset_; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  bool shares_storage_with(const Tensor& other) const {
    return storage_ != nullptr && storage_ == other.storage_;
  }
  // "bf16[4096, 11008]"; a CUDA tensor adds " (cuda)", an undefined one is "undefined".
  std::string describe() const;

  // ---- element access (a device pointer for kCUDA tensors) ----
  const void* data() const;
  void* mutable_data();  // throws if read-only
  // Typed access; throws unless dtype_matches<T>(dtype()) and the address is aligned for T.
  // Bit containers: uint16_t reads F16/BF16/U16, uint8_t reads U8/BOOL/F8_*, std::byte reads any.
  template <typename T>
  const T* data() const {
    check_access(dtype_matches<T>(dtype_), alignof(T), typeid_name<T>());
    return static_cast<const T*>(data());
  }
  template <typename T>
  T* mutable_data() {
    check_access(dtype_matches<T>(dtype_), alignof(T), typeid_name<T>());
    return static_cast<T*>(mutable_data());
  }

  // ---- views (share storage, never copy) ----
  // Rows [begin, end) of dimension 0.
  Tensor slice(int64_t begin, int64_t end) const;
  // Row `index` of dimension 0, with that dimension removed.
  Tensor select(int64_t index) const;
  // The same elements with another shape of equal numel; at most one dimension may be -1 (inferred).
  Tensor view(std::vector<int64_t> shape) const;
  Tensor reshape(std::vector<int64_t> shape) const { return view(std::move(shape)); }
  // Reinterprets bytes [offset, offset + bytes of dtype×shape) of this tensor's data.
  Tensor view_bytes(std::size_t offset, DType dtype, std::vector<int64_t> shape) const;

  // ---- explicit copies ----
  // A new CPU f32 tensor with the values converted exactly (convert_to_f32). CPU tensors only.
  Tensor to_f32() const;
  // A new owned tensor on the same device with the same contents.
  Tensor clone() const;
  // A new owned tensor on `device` with the same contents (a copy even if already there).
  Tensor to(Device device) const;
  // Copies `src` into this tensor's memory (any device pair). Same dtype and shape required.
  void copy_from(const Tensor& src);

 private:
  Tensor(std::shared_ptr<Storage> storage, std::size_t offset, DType dtype,
         std::vector<int64_t> shape);
  void require_defined(const char* what) const;
  void check_access(bool dtype_ok, std::size_t alignment, const char* type_name) const;
  template <typename T>
  static const char* typeid_name();

  std::shared_ptr<Storage> storage_;
  std::size_t offset_ = 0;
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  std::size_t nbytes_ = 0;
};

// "[4096, 11008]".
std::string shape_to_string(const std::vector<int64_t>& shape);
// Product of the dimensions; throws a user error on a negative dimension or overflow.
int64_t shape_numel(const std::vector<int64_t>& shape);

// ---- template definitions ----

template <typename T>
bool dtype_matches(DType dtype) {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, std::byte>) {
    return true;
  } else if constexpr (std::is_same_v<U, float>) {
    return dtype == DType::kF32;
  } else if constexpr (std::is_same_v<U, double>) {
    return dtype == DType::kF64;
  } else if constexpr (std::is_same_v<U, uint8_t>) {
    return dtype == DType::kU8 || dtype == DType::kBool || dtype == DType::kF8E4M3 ||
           dtype == DType::kF8E5M2 || dtype == DType::kF8E8M0;
  } else if constexpr (std::is_same_v<U, int8_t>) {
    return dtype == DType::kI8;
  } else if constexpr (std::is_same_v<U, uint16_t>) {
    return dtype == DType::kU16 || dtype == DType::kF16 || dtype == DType::kBF16;
  } else if constexpr (std::is_same_v<U, int16_t>) {
    return dtype == DType::kI16;
  } else if constexpr (std::is_same_v<U, uint32_t>) {
    return dtype == DType::kU32;
  } else if constexpr (std::is_same_v<U, int32_t>) {
    return dtype == DType::kI32;
  } else if constexpr (std::is_same_v<U, uint64_t>) {
    return dtype == DType::kU64;
  } else if constexpr (std::is_same_v<U, int64_t>) {
    return dtype == DType::kI64;
  } else {
    static_assert(sizeof(U) == 0, "Tensor::data<T>: unsupported element type");
    return false;
  }
}

template <typename T>
const char* Tensor::typeid_name() {
  using U = std::remove_cv_t<T>;
  if constexpr (std::is_same_v<U, std::byte>) return "std::byte";
  else if constexpr (std::is_same_v<U, float>) return "float";
  else if constexpr (std::is_same_v<U, double>) return "double";
  else if constexpr (std::is_same_v<U, uint8_t>) return "uint8_t";
  else if constexpr (std::is_same_v<U, int8_t>) return "int8_t";
  else if constexpr (std::is_same_v<U, uint16_t>) return "uint16_t";
  else if constexpr (std::is_same_v<U, int16_t>) return "int16_t";
  else if constexpr (std::is_same_v<U, uint32_t>) return "uint32_t";
  else if constexpr (std::is_same_v<U, int32_t>) return "int32_t";
  else if constexpr (std::is_same_v<U, uint64_t>) return "uint64_t";
  else return "int64_t";
}

}  // namespace refinery
