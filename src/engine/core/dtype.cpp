// dtype metadata: names as the safetensors format spells them, and element widths.
// The value conversions live in dtype_convert.cpp.
#include "engine/core/dtype.hpp"

#include <array>

#include "engine/core/error.hpp"

namespace refinery {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  std::size_t bits;
  bool is_float;
};

constexpr std::array<DTypeInfo, 22> kDTypes{{
    {DType::kBool, "BOOL", 8, false},     {DType::kU8, "U8", 8, false},
    {DType::kI8, "I8", 8, false},         {DType::kU16, "U16", 16, false},
    {DType::kI16, "I16", 16, false},      {DType::kU32, "U32", 32, false},
    {DType::kI32, "I32", 32, false},      {DType::kU64, "U64", 64, false},
    {DType::kI64, "I64", 64, false},      {DType::kF16, "F16", 16, true},
    {DType::kBF16, "BF16", 16, true},     {DType::kF32, "F32", 32, true},
    {DType::kF64, "F64", 64, true},       {DType::kF8E4M3, "F8_E4M3", 8, true},
    {DType::kF8E5M2, "F8_E5M2", 8, true}, {DType::kF8E8M0, "F8_E8M0", 8, true},
    {DType::kF8E4M3FNUZ, "F8_E4M3FNUZ", 8, true}, {DType::kF8E5M2FNUZ, "F8_E5M2FNUZ", 8, true},
    {DType::kF4, "F4", 4, true},          {DType::kF6E2M3, "F6_E2M3", 6, true},
    {DType::kF6E3M2, "F6_E3M2", 6, true}, {DType::kC64, "C64", 64, true},
}};

const DTypeInfo& info(DType dtype) {
  for (const auto& entry : kDTypes)
    if (entry.dtype == dtype) return entry;
  throw_internal_error("unknown DType value ", static_cast<int>(dtype));
}

}  // namespace

std::size_t dtype_bits(DType dtype) { return info(dtype).bits; }

std::size_t dtype_bytes_for(DType dtype, std::size_t count) {
  const std::size_t bits = info(dtype).bits;
  if ((count * bits) % 8 != 0)
    throw_user_error(count, " elements of ", info(dtype).name, " (", bits,
                     " bits each) do not fill a whole number of bytes");
  return count * bits / 8;
}

std::string_view dtype_name(DType dtype) { return info(dtype).name; }

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto& entry : kDTypes)
    if (entry.name == name) return entry.dtype;
  return std::nullopt;
}

bool dtype_is_float(DType dtype) { return info(dtype).is_float; }

}  // namespace refinery
