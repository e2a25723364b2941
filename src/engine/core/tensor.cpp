// Tensor and Storage (see tensor.hpp). Every size computation is checked for overflow and every
// view is bounds-checked against its parent, so a bad shape or offset from a file becomes a
// refinery::Error rather than an out-of-bounds read.
#include "engine/core/tensor.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>
#include <new>

#include "engine/core/device_memory.hpp"

namespace refinery {
namespace {

constexpr std::size_t kHostAlignment = 64;  // cache line; also enough for AVX-512 loads

// Bytes of `numel` elements of `dtype`, or a user error naming the shape when they do not fill
// whole bytes (sub-byte dtypes) or overflow size_t.
std::size_t bytes_for(DType dtype, int64_t numel, const std::vector<int64_t>& shape) {
  const std::size_t bits = dtype_bits(dtype);
  const auto count = static_cast<std::size_t>(numel);
  if (count > std::numeric_limits<std::size_t>::max() / bits)
    throw_user_error("tensor shape ", shape_to_string(shape), " of ", dtype_name(dtype),
                     " is too large: its byte size overflows");
  if ((count * bits) % 8 != 0)
    throw_user_error("tensor shape ", shape_to_string(shape), " of ", dtype_name(dtype), " (", bits,
                     " bits per element) does not fill a whole number of bytes");
  return count * bits / 8;
}

std::string lowercase(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::string_view device_name(Device device) { return device == Device::kCUDA ? "cuda" : "cpu"; }

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t numel = 1;
  for (int64_t dim : shape)
    if (dim < 0)
      throw_user_error("tensor shape ", shape_to_string(shape),
                       " has a negative dimension; every dimension must be >= 0");
  for (int64_t dim : shape) {
    if (dim != 0 && numel > std::numeric_limits<int64_t>::max() / dim)
      throw_user_error("tensor shape ", shape_to_string(shape),
                       " has too many elements (the count overflows 64 bits)");
    numel *= dim;
  }
  return numel;
}

// ---- Storage --------------------------------------------------------------------------------

Storage::Storage(Kind kind, std::byte* data, std::size_t bytes, Device device, bool read_only,
                 std::shared_ptr<const void> owner)
    : kind_(kind),
      data_(data),
      bytes_(bytes),
      device_(device),
      read_only_(read_only),
      owner_(std::move(owner)) {}

Storage::~Storage() {
  switch (kind_) {
    case Kind::kHost:
      ::operator delete(data_, std::align_val_t{kHostAlignment});
      break;
    case Kind::kDevice:
      device_free(data_);
      break;
    case Kind::kExternal:
      break;  // owner_ releases the region when its last holder goes
  }
}

std::shared_ptr<Storage> Storage::allocate_host(std::size_t bytes) {
  void* ptr = nullptr;
  try {
    // At least one byte so that every storage has a distinct, non-null address.
    ptr = ::operator new(std::max<std::size_t>(bytes, 1), std::align_val_t{kHostAlignment});
  } catch (const std::bad_alloc&) {
    throw_internal_error("out of host memory allocating a tensor of ", bytes, " bytes");
  }
  try {
    return std::shared_ptr<Storage>(
        new Storage(Kind::kHost, static_cast<std::byte*>(ptr), bytes, Device::kCPU, false, {}));
  } catch (...) {
    ::operator delete(ptr, std::align_val_t{kHostAlignment});
    throw;
  }
}

std::shared_ptr<Storage> Storage::allocate_device(std::size_t bytes) {
  void* ptr = device_malloc(bytes);
  try {
    return std::shared_ptr<Storage>(
        new Storage(Kind::kDevice, static_cast<std::byte*>(ptr), bytes, Device::kCUDA, false, {}));
  } catch (...) {
    device_free(ptr);
    throw;
  }
}

std::shared_ptr<Storage> Storage::external(void* data, std::size_t bytes, Device device,
                                           std::shared_ptr<const void> owner, bool read_only) {
  if (data == nullptr && bytes > 0)
    throw_internal_error("Storage::external: null data pointer for ", bytes, " bytes");
  return std::shared_ptr<Storage>(new Storage(Kind::kExternal, static_cast<std::byte*>(data),
                                              bytes, device, read_only, std::move(owner)));
}

// ---- Tensor: construction -------------------------------------------------------------------

Tensor::Tensor(std::shared_ptr<Storage> storage, std::size_t offset, DType dtype,
               std::vector<int64_t> shape)
    : storage_(std::move(storage)), offset_(offset), dtype_(dtype), shape_(std::move(shape)) {
  numel_ = shape_numel(shape_);
  nbytes_ = bytes_for(dtype_, numel_, shape_);
  REFINERY_CHECK(offset_ <= storage_->bytes() && nbytes_ <= storage_->bytes() - offset_,
                 "view ", describe(), " at byte ", offset_, " exceeds its storage of ",
                 storage_->bytes(), " bytes");
}

Tensor Tensor::empty(DType dtype, std::vector<int64_t> shape, Device device) {
  const std::size_t bytes = bytes_for(dtype, shape_numel(shape), shape);
  auto storage =
      device == Device::kCUDA ? Storage::allocate_device(bytes) : Storage::allocate_host(bytes);
  return Tensor(std::move(storage), 0, dtype, std::move(shape));
}

Tensor Tensor::zeros(DType dtype, std::vector<int64_t> shape, Device device) {
  Tensor tensor = empty(dtype, std::move(shape), device);
  if (device == Device::kCUDA)
    device_memset_zero(tensor.mutable_data(), tensor.nbytes());
  else if (tensor.nbytes() > 0)
    std::memset(tensor.mutable_data(), 0, tensor.nbytes());
  return tensor;
}

Tensor Tensor::from_external(DType dtype, std::vector<int64_t> shape, const void* data,
                             std::shared_ptr<const void> owner, bool read_only, Device device) {
  const std::size_t bytes = bytes_for(dtype, shape_numel(shape), shape);
  // const_cast: writes are only allowed through mutable_data(), which refuses read-only storage;
  // a caller passing read_only = false vouches that the region is writable.
  auto storage = Storage::external(const_cast<void*>(data), bytes, device, std::move(owner),
                                   read_only);
  return Tensor(std::move(storage), 0, dtype, std::move(shape));
}

Tensor Tensor::copy_of(DType dtype, std::vector<int64_t> shape, const void* src) {
  Tensor tensor = empty(dtype, std::move(shape), Device::kCPU);
  if (tensor.nbytes() > 0) std::memcpy(tensor.mutable_data(), src, tensor.nbytes());
  return tensor;
}

// ---- Tensor: properties and access ----------------------------------------------------------

void Tensor::require_defined(const char* what) const {
  if (!defined()) throw_internal_error("Tensor::", what, " called on an undefined tensor");
}

int64_t Tensor::size(int64_t dim) const {
  const int64_t n = ndim();
  const int64_t index = dim < 0 ? dim + n : dim;
  if (index < 0 || index >= n)
    throw_internal_error("Tensor::size(", dim, ") out of range for ", describe(), " with ", n,
                         " dimensions");
  return shape_[static_cast<std::size_t>(index)];
}

Device Tensor::device() const {
  require_defined("device");
  return storage_->device();
}

bool Tensor::is_read_only() const {
  require_defined("is_read_only");
  return storage_->read_only();
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined";
  std::string out = lowercase(dtype_name(dtype_)) + shape_to_string(shape_);
  if (storage_->device() == Device::kCUDA) out += " (cuda)";
  return out;
}

const void* Tensor::data() const {
  require_defined("data");
  return storage_->data() + offset_;
}

void* Tensor::mutable_data() {
  require_defined("mutable_data");
  if (storage_->read_only())
    throw_internal_error("tensor ", describe(),
                         " is read-only (e.g. memory-mapped from a file); clone() it to modify it");
  return storage_->data() + offset_;
}

void Tensor::check_access(bool dtype_ok, std::size_t alignment, const char* type_name) const {
  require_defined("data<T>");
  if (!dtype_ok)
    throw_internal_error("tensor ", describe(), " holds ", dtype_name(dtype_),
                         " elements; it cannot be accessed as ", type_name);
  const auto address = reinterpret_cast<std::uintptr_t>(storage_->data() + offset_);
  if (address % alignment != 0)
    throw_internal_error("tensor ", describe(), " starts at an address not aligned to ", alignment,
                         " bytes for ", type_name,
                         " (an unaligned region of a file); clone() it or use to_f32()");
}

// ---- Tensor: views --------------------------------------------------------------------------

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  require_defined("slice");
  if (shape_.empty())
    throw_internal_error("cannot slice ", describe(), ": it has no dimension 0");
  if (begin < 0 || begin > end || end > shape_[0])
    throw_user_error("slice [", begin, ", ", end, ") of dimension 0 is out of range for tensor ",
                     describe(), "; it needs 0 <= begin <= end <= ", shape_[0]);
  std::vector<int64_t> row_shape(shape_.begin() + 1, shape_.end());
  const int64_t row_numel = shape_numel(row_shape);
  // The product cannot overflow: begin * row_numel <= numel, which fits.
  const std::size_t offset = bytes_for(dtype_, begin * row_numel, shape_);
  std::vector<int64_t> shape = shape_;
  shape[0] = end - begin;
  return Tensor(storage_, offset_ + offset, dtype_, std::move(shape));
}

Tensor Tensor::select(int64_t index) const {
  require_defined("select");
  if (shape_.empty())
    throw_internal_error("cannot select from ", describe(), ": it has no dimension 0");
  if (index < 0 || index >= shape_[0])
    throw_user_error("index ", index, " of dimension 0 is out of range for tensor ", describe(),
                     "; it needs 0 <= index < ", shape_[0]);
  Tensor row = slice(index, index + 1);
  row.shape_.erase(row.shape_.begin());
  return row;
}

Tensor Tensor::view(std::vector<int64_t> shape) const {
  require_defined("view");
  int inferred = -1;
  int64_t known = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (inferred >= 0)
        throw_user_error("view shape ", shape_to_string(shape), " for tensor ", describe(),
                         " has more than one -1; at most one dimension can be inferred");
      inferred = static_cast<int>(i);
    } else if (shape[i] < 0) {
      throw_user_error("view shape ", shape_to_string(shape), " for tensor ", describe(),
                       " has a negative dimension; use >= 0 or a single -1");
    } else {
      if (shape[i] != 0 && known > std::numeric_limits<int64_t>::max() / shape[i])
        throw_user_error("view shape ", shape_to_string(shape), " has too many elements");
      known *= shape[i];
    }
  }
  if (inferred >= 0) {
    if (known == 0 || numel_ % known != 0)
      throw_user_error("cannot view tensor ", describe(), " (", numel_, " elements) as ",
                       shape_to_string(shape), ": the -1 dimension cannot be inferred");
    shape[static_cast<std::size_t>(inferred)] = numel_ / known;
  } else if (known != numel_) {
    throw_user_error("cannot view tensor ", describe(), " (", numel_, " elements) as ",
                     shape_to_string(shape), " (", known, " elements); the counts must match");
  }
  return Tensor(storage_, offset_, dtype_, std::move(shape));
}

Tensor Tensor::view_bytes(std::size_t offset, DType dtype, std::vector<int64_t> shape) const {
  require_defined("view_bytes");
  const std::size_t bytes = bytes_for(dtype, shape_numel(shape), shape);
  if (offset > nbytes_ || bytes > nbytes_ - offset)
    throw_user_error("byte range [", offset, ", ", offset + bytes, ") for ",
                     lowercase(dtype_name(dtype)), shape_to_string(shape),
                     " is outside tensor ", describe(), " of ", nbytes_, " bytes");
  return Tensor(storage_, offset_ + offset, dtype, std::move(shape));
}

// ---- Tensor: copies -------------------------------------------------------------------------

Tensor Tensor::to_f32() const {
  require_defined("to_f32");
  if (device() != Device::kCPU)
    throw_internal_error("to_f32() needs a CPU tensor, got ", describe(),
                         "; copy it to the host first with to(Device::kCPU)");
  Tensor out = empty(DType::kF32, shape_, Device::kCPU);
  convert_to_f32(dtype_, data(), out.mutable_data<float>(), static_cast<std::size_t>(numel_));
  return out;
}

Tensor Tensor::clone() const {
  require_defined("clone");
  return to(device());
}

Tensor Tensor::to(Device device) const {
  require_defined("to");
  Tensor out = empty(dtype_, shape_, device);
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  require_defined("copy_from");
  src.require_defined("copy_from (source)");
  if (src.dtype_ != dtype_ || src.shape_ != shape_)
    throw_internal_error("copy_from: source ", src.describe(), " does not match destination ",
                         describe(), " (dtype and shape must be equal; use view() or to_f32())");
  void* dst_ptr = mutable_data();
  if (nbytes_ == 0) return;
  const Device from = src.device();
  const Device to = device();
  if (from == Device::kCPU && to == Device::kCPU)
    std::memmove(dst_ptr, src.data(), nbytes_);  // views of one storage may overlap
  else if (from == Device::kCPU)
    copy_host_to_device(dst_ptr, src.data(), nbytes_);
  else if (to == Device::kCPU)
    copy_device_to_host(dst_ptr, src.data(), nbytes_);
  else
    copy_device_to_device(dst_ptr, src.data(), nbytes_);
}

}  // namespace refinery
