#include "engine/io/h5_file.hpp"

#include <algorithm>
#include <bit>
#include <limits>

namespace refinery::io {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the f16 memory type assumes a little-endian host");

herr_t collect_error(unsigned /*n*/, const H5E_error2_t* err, void* data) {
  auto* messages = static_cast<std::vector<std::string>*>(data);
  if (err != nullptr && err->desc != nullptr && err->desc[0] != '\0') {
    std::string desc = err->desc;
    if (messages->empty() || messages->back() != desc) messages->push_back(std::move(desc));
  }
  return 0;
}

H5Handle make_f16_type() {
  // IEEE half: sign bit 15, exponent bits 10..14 (bias 15), mantissa bits 0..9. This is the type
  // h5py maps to numpy float16 (it builds its own the same way from a copy of IEEE f32).
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Handle type(t, H5Tclose);
  if (t < 0 || H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 ||
      H5Tset_precision(t, 16) < 0 || H5Tset_ebias(t, 15) < 0) {
    throw_h5_error(ErrorKind::kInternal, "", "", "cannot build the HDF5 float16 type");
  }
  return type;
}

H5Handle copy_type(hid_t predefined) {
  hid_t t = H5Tcopy(predefined);
  if (t < 0) throw_h5_error(ErrorKind::kInternal, "", "", "H5Tcopy failed");
  return H5Handle(t, H5Tclose);
}

bool is_integer(DType d) {
  switch (d) {
    case DType::kU8:
    case DType::kI8:
    case DType::kU16:
    case DType::kI16:
    case DType::kU32:
    case DType::kI32:
    case DType::kU64:
    case DType::kI64:
      return true;
    default:
      return false;
  }
}

bool is_signed_integer(DType d) {
  return d == DType::kI8 || d == DType::kI16 || d == DType::kI32 || d == DType::kI64;
}

}  // namespace

// ---- H5Handle
// ------------------------------------------------------------------------------------

H5Handle& H5Handle::operator=(H5Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    close_ = other.close_;
    other.id_ = H5I_INVALID_HID;
  }
  return *this;
}

herr_t H5Handle::close() {
  herr_t status = 0;
  if (id_ >= 0 && close_ != nullptr) status = close_(id_);
  id_ = H5I_INVALID_HID;
  return status;
}

// ---- errors
// --------------------------------------------------------------------------------------

void h5_silence_errors() {
  // The automatic printer writes HDF5's whole error stack to stderr on every failure, including
  // the ones we expect (probing for an attribute) and the ones we report ourselves, better worded.
  thread_local bool silenced = false;
  if (!silenced) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}

std::string h5_take_error_stack() {
  std::vector<std::string> messages;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &messages);
  H5Eclear2(H5E_DEFAULT);
  std::string out;
  for (const auto& m : messages) {
    if (!out.empty()) out += ": ";
    out += m;
  }
  return out;
}

void throw_h5_error(ErrorKind kind, const std::string& file, const std::string& object,
                    const std::string& what) {
  // "<file> <object>: <what>; HDF5 says: <stack>" -- the location first, as compilers do.
  std::string message = file;
  if (!object.empty()) message += (message.empty() ? "" : " ") + object;
  if (!message.empty()) message += ": ";
  message += what;
  std::string stack = h5_take_error_stack();
  if (!stack.empty()) message += "; HDF5 says: " + stack;
  throw Error(kind, message);
}

H5Handle h5_check_id(hid_t id, H5Handle::CloseFn close, ErrorKind kind, const std::string& file,
                     const std::string& object, const std::string& what) {
  if (id < 0) throw_h5_error(kind, file, object, what);
  return H5Handle(id, close);
}

void h5_check(herr_t status, ErrorKind kind, const std::string& file, const std::string& object,
              const std::string& what) {
  if (status < 0) throw_h5_error(kind, file, object, what);
}

// ---- types
// ---------------------------------------------------------------------------------------

H5Handle h5_file_type(DType dtype) {
  switch (dtype) {
    case DType::kU8:
      return copy_type(H5T_STD_U8LE);
    case DType::kI8:
      return copy_type(H5T_STD_I8LE);
    case DType::kU16:
      return copy_type(H5T_STD_U16LE);
    case DType::kI16:
      return copy_type(H5T_STD_I16LE);
    case DType::kU32:
      return copy_type(H5T_STD_U32LE);
    case DType::kI32:
      return copy_type(H5T_STD_I32LE);
    case DType::kU64:
      return copy_type(H5T_STD_U64LE);
    case DType::kI64:
      return copy_type(H5T_STD_I64LE);
    case DType::kF16:
      return make_f16_type();
    case DType::kF32:
      return copy_type(H5T_IEEE_F32LE);
    case DType::kF64:
      return copy_type(H5T_IEEE_F64LE);
    default:
      throw_internal_error("no HDF5 file type for dtype ", dtype_name(dtype));
  }
}

H5Handle h5_memory_type(DType dtype) {
  switch (dtype) {
    case DType::kU8:
      return copy_type(H5T_NATIVE_UINT8);
    case DType::kI8:
      return copy_type(H5T_NATIVE_INT8);
    case DType::kU16:
      return copy_type(H5T_NATIVE_UINT16);
    case DType::kI16:
      return copy_type(H5T_NATIVE_INT16);
    case DType::kU32:
      return copy_type(H5T_NATIVE_UINT32);
    case DType::kI32:
      return copy_type(H5T_NATIVE_INT32);
    case DType::kU64:
      return copy_type(H5T_NATIVE_UINT64);
    case DType::kI64:
      return copy_type(H5T_NATIVE_INT64);
    case DType::kF16:
      return make_f16_type();
    case DType::kF32:
      return copy_type(H5T_NATIVE_FLOAT);
    case DType::kF64:
      return copy_type(H5T_NATIVE_DOUBLE);
    default:
      throw_internal_error("no HDF5 memory type for dtype ", dtype_name(dtype));
  }
}

std::string h5_dtype_label(DType d) {
  switch (d) {
    case DType::kU8:
      return "uint8";
    case DType::kI8:
      return "int8";
    case DType::kU16:
      return "uint16";
    case DType::kI16:
      return "int16";
    case DType::kU32:
      return "uint32";
    case DType::kI32:
      return "int32";
    case DType::kU64:
      return "uint64";
    case DType::kI64:
      return "int64";
    case DType::kF16:
      return "float16";
    case DType::kF32:
      return "float32";
    case DType::kF64:
      return "float64";
    default:
      return std::string(dtype_name(d));
  }
}

std::string h5_describe_type(hid_t type) {
  H5T_class_t cls = H5Tget_class(type);
  size_t size = H5Tget_size(type);
  switch (cls) {
    case H5T_INTEGER: {
      bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
      return str(is_signed ? "int" : "uint", size * 8);
    }
    case H5T_FLOAT: {
      size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
      H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
      if (size == 2 && esize == 8) return "bfloat16-like 16-bit float (8 exponent bits)";
      return str("float", size * 8);
    }
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum";
    case H5T_ARRAY:
      return "array";
    case H5T_VLEN:
      return "variable-length sequence";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_BITFIELD:
      return "bitfield";
    case H5T_REFERENCE:
      return "reference";
    default:
      return "unknown type";
  }
}

DType h5_dtype_of(hid_t type, const std::string& file, const std::string& object) {
  H5T_class_t cls = H5Tget_class(type);
  size_t size = H5Tget_size(type);
  if (cls == H5T_INTEGER && H5Tget_precision(type) == size * 8 && H5Tget_offset(type) == 0) {
    bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    switch (size) {
      case 1:
        return is_signed ? DType::kI8 : DType::kU8;
      case 2:
        return is_signed ? DType::kI16 : DType::kU16;
      case 4:
        return is_signed ? DType::kI32 : DType::kU32;
      case 8:
        return is_signed ? DType::kI64 : DType::kU64;
      default:
        break;
    }
  } else if (cls == H5T_FLOAT) {
    size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
    H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
    size_t ebias = H5Tget_ebias(type);
    if (size == 2 && spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 &&
        ebias == 15)
      return DType::kF16;
    if (size == 4 && spos == 31 && esize == 8 && msize == 23 && ebias == 127) return DType::kF32;
    if (size == 8 && spos == 63 && esize == 11 && msize == 52 && ebias == 1023) return DType::kF64;
  }
  H5Eclear2(H5E_DEFAULT);
  throw_user_error(
      object, " in ", file, " stores elements of type ", h5_describe_type(type),
      ", which refinery does not read (supported: int8..int64, uint8..uint64, float16, "
      "float32, float64); rewrite the dataset with a supported numpy dtype");
}

bool h5_lossless_conversion(DType from, DType to) {
  if (from == to) return true;
  if (is_integer(from) && is_integer(to)) {
    size_t from_bits = dtype_bits(from), to_bits = dtype_bits(to);
    bool from_signed = is_signed_integer(from), to_signed = is_signed_integer(to);
    if (from_signed == to_signed) return to_bits >= from_bits;
    if (!from_signed && to_signed) return to_bits > from_bits;
    return false;  // signed -> unsigned loses negatives
  }
  if (from == DType::kF16) return to == DType::kF32 || to == DType::kF64;
  if (from == DType::kF32) return to == DType::kF64;
  return false;
}

bool h5_deflate_available() {
  h5_silence_errors();
  if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) <= 0) return false;
  unsigned int config = 0;
  if (H5Zget_filter_info(H5Z_FILTER_DEFLATE, &config) < 0) return false;
  return (config & H5Z_FILTER_CONFIG_ENCODE_ENABLED) != 0;
}

// ---- H5Object: attributes
// -------------------------------------------------------------------------

void H5Object::fail(ErrorKind kind, const std::string& what) const {
  throw_h5_error(kind, file_path_, name_, what);
}

std::string H5Object::attribute_context(const std::string& attr) const {
  return str("attribute '", attr, "'");
}

bool H5Object::has_attribute(const std::string& attr) const {
  h5_silence_errors();
  htri_t exists = H5Aexists(id(), attr.c_str());
  if (exists < 0) fail(ErrorKind::kUser, str("cannot look up ", attribute_context(attr)));
  return exists > 0;
}

H5Handle H5Object::create_scalar_attribute(const std::string& attr, hid_t type) {
  h5_silence_errors();
  if (has_attribute(attr) && H5Adelete(id(), attr.c_str()) < 0)
    fail(ErrorKind::kInternal, str("cannot replace ", attribute_context(attr)));
  H5Handle space = h5_check_id(H5Screate(H5S_SCALAR), H5Sclose, ErrorKind::kInternal, file_path_,
                               name_, "H5Screate failed");
  return h5_check_id(H5Acreate2(id(), attr.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
                     H5Aclose, ErrorKind::kInternal, file_path_, name_,
                     str("cannot create ", attribute_context(attr)));
}

void H5Object::set_string_attribute(const std::string& attr, const std::string& value) {
  h5_silence_errors();
  H5Handle type = copy_type(H5T_C_S1);
  if (H5Tset_size(type.get(), H5T_VARIABLE) < 0 || H5Tset_cset(type.get(), H5T_CSET_UTF8) < 0)
    fail(ErrorKind::kInternal, "cannot build the string type");
  H5Handle a = create_scalar_attribute(attr, type.get());
  const char* data = value.c_str();
  h5_check(H5Awrite(a.get(), type.get(), &data), ErrorKind::kInternal, file_path_, name_,
           str("cannot write ", attribute_context(attr)));
}

void H5Object::set_int_attribute(const std::string& attr, int64_t value) {
  H5Handle a = create_scalar_attribute(attr, H5T_STD_I64LE);
  h5_check(H5Awrite(a.get(), H5T_NATIVE_INT64, &value), ErrorKind::kInternal, file_path_, name_,
           str("cannot write ", attribute_context(attr)));
}

H5Object::OpenAttribute H5Object::open_scalar_attribute(const std::string& attr,
                                                        H5T_class_t type_class,
                                                        const char* expected) const {
  if (!has_attribute(attr))
    fail(ErrorKind::kUser,
         str("missing ", attribute_context(attr), " (was the file written by refinery?)"));
  H5Handle a = h5_check_id(H5Aopen(id(), attr.c_str(), H5P_DEFAULT), H5Aclose, ErrorKind::kUser,
                           file_path_, name_, str("cannot open ", attribute_context(attr)));
  H5Handle type = h5_check_id(H5Aget_type(a.get()), H5Tclose, ErrorKind::kUser, file_path_, name_,
                              str("cannot read the type of ", attribute_context(attr)));
  H5Handle space = h5_check_id(H5Aget_space(a.get()), H5Sclose, ErrorKind::kUser, file_path_, name_,
                               str("cannot read the shape of ", attribute_context(attr)));
  if (H5Tget_class(type.get()) != type_class || H5Sget_simple_extent_npoints(space.get()) != 1) {
    fail(ErrorKind::kUser, str(attribute_context(attr), " should be ", expected, ", found ",
                               H5Sget_simple_extent_npoints(space.get()), " element(s) of type ",
                               h5_describe_type(type.get())));
  }
  return {std::move(a), std::move(type)};
}

std::string H5Object::string_attribute(const std::string& attr) const {
  const auto [a, type] = open_scalar_attribute(attr, H5T_STRING, "one string");
  H5T_cset_t cset = H5Tget_cset(type.get());
  H5Handle mem = copy_type(H5T_C_S1);
  if (H5Tis_variable_str(type.get()) > 0) {
    if (H5Tset_size(mem.get(), H5T_VARIABLE) < 0 || H5Tset_cset(mem.get(), cset) < 0)
      fail(ErrorKind::kInternal, "cannot build the string type");
    char* data = nullptr;
    h5_check(H5Aread(a.get(), mem.get(), &data), ErrorKind::kUser, file_path_, name_,
             str("cannot read ", attribute_context(attr)));
    std::string value = data != nullptr ? std::string(data) : std::string();
    if (data != nullptr) H5free_memory(data);
    return value;
  }
  size_t size = H5Tget_size(type.get());
  H5T_str_t pad = H5Tget_strpad(type.get());
  if (H5Tset_size(mem.get(), size) < 0 || H5Tset_cset(mem.get(), cset) < 0 ||
      H5Tset_strpad(mem.get(), H5T_STR_NULLPAD) < 0)
    fail(ErrorKind::kInternal, "cannot build the string type");
  std::string value(size, '\0');
  h5_check(H5Aread(a.get(), mem.get(), value.data()), ErrorKind::kUser, file_path_, name_,
           str("cannot read ", attribute_context(attr)));
  value.resize(std::min(value.find('\0'), value.size()));
  if (pad == H5T_STR_SPACEPAD) value.erase(value.find_last_not_of(' ') + 1);
  return value;
}

int64_t H5Object::int_attribute(const std::string& attr) const {
  const auto [a, type] = open_scalar_attribute(attr, H5T_INTEGER, "one integer");
  if (H5Tget_sign(type.get()) == H5T_SGN_NONE && H5Tget_size(type.get()) >= 8) {
    uint64_t value = 0;
    h5_check(H5Aread(a.get(), H5T_NATIVE_UINT64, &value), ErrorKind::kUser, file_path_, name_,
             str("cannot read ", attribute_context(attr)));
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(ErrorKind::kUser, str(attribute_context(attr), " is ", value, ", beyond int64"));
    return static_cast<int64_t>(value);
  }
  if (H5Tget_size(type.get()) > 8)
    fail(ErrorKind::kUser, str(attribute_context(attr), " is wider than 64 bits"));
  int64_t value = 0;
  h5_check(H5Aread(a.get(), H5T_NATIVE_INT64, &value), ErrorKind::kUser, file_path_, name_,
           str("cannot read ", attribute_context(attr)));
  return value;
}

}  // namespace refinery::io
