#pragma once
// Writing a quantized Hugging Face model directory in the AutoAWQ GEMM format (DESIGN §4, §5):
//   model.safetensors (or shards + index)  every tensor of the source, except that each quantized
//                                          linear's `.weight` becomes `.qweight` I32 [in, out/pack],
//                                          `.qzeros` I32 [in/g, out/pack], `.scales` F16 [in/g, out]
//   config.json       the source's, plus quantization_config {"quant_method": "awq", "bits",
//                     "group_size", "zero_point", "version": "gemm", "modules_to_not_convert"}
//   tokenizer files   copied; refinery.json: provenance (pass, options, parent, metrics).
// vLLM and transformers load it as an AutoAWQ checkpoint when every quantized layer uses the
// config's group size (see usable_group_size).

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend/linear_weight.hpp"
#include "engine/core/tensor.hpp"
#include "quantize/group_quant.hpp"

namespace refinery::quantize {

struct QuantizedModelParts {
  // HF linear prefix (e.g. "model.layers.0.self_attn.q_proj") -> packed host tensors; its
  // ".weight" (and a fused-expert tensor whose experts are all quantized) is dropped.
  std::map<std::string, backend::AwqWeight> quantized;
  // Full tensor name -> new value, same shape (e.g. an RMSNorm weight with AWQ scales folded in).
  std::map<std::string, Tensor> replaced;
  // Linear prefixes left in bf16: reported and listed in modules_to_not_convert (routers and
  // shared-expert gates are added by the writer).
  std::vector<std::string> not_converted;
};

// Refuses (user error) an `out_dir` that is a file, is or contains or lies inside `source`, or is
// a non-empty directory while `force` is false. Call before any long work.
void check_output_directory(const std::filesystem::path& source, const std::filesystem::path& out_dir,
                            bool force);

// Streams every tensor of the model directory `source` into a temporary directory next to
// `out_dir` (source tensors are copied from the memory-mapped files into the memory-mapped
// output; nothing is held twice), then renames it onto `out_dir` (an existing `out_dir` is
// replaced only after the new one is complete). `provenance` is written as refinery.json with a
// "quantization" object (bits, group size, zero point, counts, modules left unquantized) added.
void write_quantized_model(const std::filesystem::path& source, const std::filesystem::path& out_dir,
                           const QuantizedModelParts& parts, const GroupQuantSpec& spec,
                           const nlohmann::json& provenance);

}  // namespace refinery::quantize
