#include "engine/model/quant_config.hpp"

#include <cctype>

#include "engine/core/error.hpp"
#include "engine/model/config_json.hpp"

namespace refinery::model {

const char* quant_method_name(QuantMethod method) {
  switch (method) {
    case QuantMethod::kNone: return "none";
    case QuantMethod::kFp8Block: return "fp8";
    case QuantMethod::kAwq: return "awq";
  }
  return "?";
}

namespace {

QuantConfig parse_fp8(const ConfigJson& q) {
  QuantConfig out;
  out.method = QuantMethod::kFp8Block;
  std::string fmt = q.get_string("fmt").value_or("e4m3");
  if (fmt != "e4m3")
    q.fail("fmt", str("FP8 format \"", fmt, "\" is not supported; the engine reads E4M3 (\"e4m3\") weights."));
  out.activation_scheme = q.get_string("activation_scheme").value_or("dynamic");
  if (out.activation_scheme != "dynamic")
    q.fail("activation_scheme", str("expected \"dynamic\" (activations are not quantized in the checkpoint), "
                                    "found \"", out.activation_scheme, "\"."));
  auto block = q.get_int_list("weight_block_size");
  if (!block)
    q.fail("weight_block_size", "missing: only block-scaled FP8 (weight_block_size [128, 128], the DeepSeek-V3 "
                                "release format) is supported, not per-tensor FP8.");
  if (block->size() != 2 || (*block)[0] <= 0 || (*block)[1] <= 0)
    q.fail("weight_block_size", str("expected two positive integers [out, in], found ", block->size(), " values."));
  out.block_out = static_cast<int>((*block)[0]);
  out.block_in = static_cast<int>((*block)[1]);
  return out;
}

QuantConfig parse_awq(const ConfigJson& q) {
  QuantConfig out;
  out.method = QuantMethod::kAwq;
  // AutoAWQ writes `bits`; some exporters write `w_bit` / `q_group_size` (its internal names).
  out.bits = static_cast<int>(q.get_int("bits").value_or(q.int_or("w_bit", 4)));
  if (out.bits != 4 && out.bits != 3 && out.bits != 8)
    q.fail("bits", str("AWQ with ", out.bits, " bits is not supported; expected 3, 4 or 8."));
  out.group_size = static_cast<int>(q.get_int("group_size").value_or(q.int_or("q_group_size", 128)));
  if (out.group_size <= 0)
    q.fail("group_size", str("expected a positive group size (128 or 64), found ", out.group_size,
                             ". Per-channel AWQ (-1) is not supported."));
  out.zero_point = q.bool_or("zero_point", true);
  std::string version = q.get_string("version").value_or("gemm");
  for (char& c : version) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (version == "gemm") {
    out.version = AwqVersion::kGemm;
  } else if (version == "gemv") {
    out.version = AwqVersion::kGemv;
  } else {
    q.fail("version", str("AWQ packing \"", version, "\" is not supported; expected \"gemm\" or \"gemv\"."));
  }
  out.modules_to_not_convert = q.get_string_list("modules_to_not_convert").value_or(std::vector<std::string>{});
  return out;
}

}  // namespace

QuantConfig parse_quant_config(const ConfigJson& config) {
  std::optional<ConfigJson> q = config.get_object("quantization_config");
  if (!q) return QuantConfig{};
  std::string method = q->require_string("quant_method", "the quantization method, e.g. \"fp8\" or \"awq\"");
  if (method == "fp8") return parse_fp8(*q);
  if (method == "awq") return parse_awq(*q);
  q->fail("quant_method", str("quantization method \"", method, "\" is not supported. Supported: \"fp8\" "
                              "(block-scaled E4M3, DeepSeek-V3 release format) and \"awq\" (AutoAWQ GEMM/GEMV). "
                              "Dequantize the checkpoint to bf16 first, or use refine quantize to make an AWQ one."));
}

}  // namespace refinery::model
