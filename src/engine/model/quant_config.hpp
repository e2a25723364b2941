#pragma once
// `quantization_config` of a checkpoint: the storage formats the engine can execute (DESIGN §3).

#include <string>
#include <vector>

namespace refinery::model {

class ConfigJson;

enum class QuantMethod { kNone, kFp8Block, kAwq };
enum class AwqVersion { kGemm, kGemv };

struct QuantConfig {
  QuantMethod method = QuantMethod::kNone;

  // kFp8Block (DeepSeek-V3 release): E4M3 weights, one f32 `weight_scale_inv` per
  // [block_out x block_in] tile of the [out, in] weight; the real weight is w8 * scale_inv.
  int block_out = 128;
  int block_in = 128;
  std::string activation_scheme = "dynamic";

  // kAwq (AutoAWQ): `qweight` int32 [in, out/8] (8 nibbles, order [0,2,4,6,1,3,5,7] for GEMM),
  // `qzeros` int32 [in/group, out/8], `scales` f16 [in/group, out].
  int bits = 4;
  int group_size = 128;
  bool zero_point = true;
  AwqVersion version = AwqVersion::kGemm;
  std::vector<std::string> modules_to_not_convert;  // name fragments left unquantized (e.g. "gate")
};

const char* quant_method_name(QuantMethod method);

// Reads `quantization_config` from the top-level config; kNone when absent or null.
QuantConfig parse_quant_config(const ConfigJson& config);

}  // namespace refinery::model
