// write_quantized_model: one pass over the source's tensors in name order, each written straight
// from the source's mapping (or from the packed/replaced host tensors) by write_checkpoint.
#include "quantize/quantized_model_writer.hpp"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "engine/backend/awq_dequant.hpp"
#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/io/atomic_file.hpp"
#include "engine/io/model_directory.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_writer.hpp"

namespace refinery::quantize {

namespace fs = std::filesystem;

namespace {

// Files next to the weights that a loader of the quantized model still needs.
const char* const kCopiedFiles[] = {"tokenizer.json",         "tokenizer_config.json",
                                    "special_tokens_map.json", "generation_config.json",
                                    "tokenizer.model",        "vocab.json",
                                    "merges.txt",             "added_tokens.json",
                                    "chat_template.jinja",    "chat_template.json"};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::span<const std::byte> bytes_of(const Tensor& t) {
  return {static_cast<const std::byte*>(t.data()), t.nbytes()};
}

// Whether the fused expert tensor `name` ("P.experts.gate_up_proj" [E, 2I, H] or
// "P.experts.down_proj" [E, H, I], transformers 5) is replaced by per-expert quantized linears:
// all of its experts (true), none (false), or some (a user error: the file would be neither).
bool fused_tensor_quantized(const std::string& name, int64_t experts,
                            const QuantizedModelParts& parts) {
  const bool gate_up = ends_with(name, ".experts.gate_up_proj");
  const std::string base = name.substr(0, name.rfind('.')) + ".";  // "P.experts."
  int64_t found = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const std::string p = base + std::to_string(e) + ".";
    for (const char* proj : gate_up ? std::vector<const char*>{"gate_proj", "up_proj"}
                                    : std::vector<const char*>{"down_proj"})
      found += parts.quantized.count(p + proj) ? 1 : 0;
  }
  const int64_t all = experts * (gate_up ? 2 : 1);
  if (found != 0 && found != all)
    throw_user_error("tensor ", name, ": ", found, " of the ", all, " expert projections it fuses "
                     "are quantized; a fused expert tensor is written per expert only when all are; "
                     "quantize all experts or none");
  return found == all && found > 0;
}


nlohmann::json quantization_config(const GroupQuantSpec& spec, const std::vector<std::string>& skip) {
  return {{"quant_method", "awq"},      {"bits", spec.bits},     {"group_size", spec.group_size},
          {"zero_point", spec.zero_point}, {"version", "gemm"}, {"modules_to_not_convert", skip}};
}

}  // namespace

void check_output_directory(const fs::path& source, const fs::path& out_dir, bool force) {
  io::check_output_model_directory(source, out_dir, force, "quantized");
}

void write_quantized_model(const fs::path& source, const fs::path& out_dir,
                           const QuantizedModelParts& parts, const GroupQuantSpec& spec,
                           const nlohmann::json& provenance) {
  validate_spec(spec);
  const io::Checkpoint ckpt = io::Checkpoint::open(source);
  nlohmann::json config = io::read_json_file(source / "config.json");

  for (const auto& [prefix, w] : parts.quantized) {
    backend::validate_awq(w, prefix);
    if (!ckpt.find(prefix + ".weight") && prefix.find(".experts.") == std::string::npos)
      throw_internal_error("write_quantized_model: ", prefix, ".weight is not in ", source.string());
  }
  for (const auto& [name, t] : parts.replaced) {
    const auto located = ckpt.find(name);
    if (!located || located->entry->shape != t.shape())
      throw_internal_error("write_quantized_model: replaced tensor ", name, " ", t.describe(),
                           " has no tensor of that shape in ", source.string());
  }

  // Tensors in the source's (sorted) name order; a quantized linear's three tensors take the
  // place of its weight. Host copies of the packed tensors live in `parts` (no copy here).
  std::vector<io::TensorToWrite> tensors;
  std::set<std::string> written_quantized;
  std::map<std::string, int> group_overrides;
  const auto add_quantized = [&](const std::string& prefix) {
    const backend::AwqWeight& w = parts.quantized.at(prefix);
    for (const auto& [part, t] : {std::pair{".qweight", &w.qweight}, std::pair{".qzeros", &w.qzeros},
                                  std::pair{".scales", &w.scales}}) {
      REFINERY_CHECK(t->device() == Device::kCPU, "write_quantized_model: ", prefix, part,
                     " must be a host tensor");
      tensors.push_back({prefix + part, t->dtype(), t->shape(), bytes_of(*t), nullptr});
    }
    if (w.group_size != spec.group_size) group_overrides[prefix] = w.group_size;
    written_quantized.insert(prefix);
  };
  for (const std::string& name : ckpt.names()) {
    const io::TensorEntry& e = *ckpt.find(name)->entry;
    if (ends_with(name, ".experts.gate_up_proj") || ends_with(name, ".experts.down_proj")) {
      if (!e.shape.empty() && fused_tensor_quantized(name, e.shape[0], parts)) {
        const std::string base = name.substr(0, name.rfind('.')) + ".";
        for (int64_t x = 0; x < e.shape[0]; ++x)
          for (const char* proj : {"gate_proj", "up_proj", "down_proj"})
            if (parts.quantized.count(base + std::to_string(x) + "." + proj) &&
                !written_quantized.count(base + std::to_string(x) + "." + proj))
              add_quantized(base + std::to_string(x) + "." + proj);
        continue;
      }
    }
    std::string prefix;
    if (ends_with(name, ".weight")) prefix = name.substr(0, name.size() - 7);
    if (ends_with(name, ".weight_scale_inv")) prefix = name.substr(0, name.size() - 17);
    if (!prefix.empty() && parts.quantized.count(prefix)) {
      // The dense (or FP8) weight is dropped; the packed tensors take its place.
      if (ends_with(name, ".weight") && !written_quantized.count(prefix)) add_quantized(prefix);
      continue;
    }
    if (const auto it = parts.replaced.find(name); it != parts.replaced.end()) {
      tensors.push_back({name, it->second.dtype(), it->second.shape(), bytes_of(it->second), nullptr});
    } else {
      tensors.push_back({name, e.dtype, e.shape, ckpt.bytes(name), nullptr});
    }
  }
  for (const auto& [prefix, w] : parts.quantized)
    if (!written_quantized.count(prefix))
      throw_internal_error("write_quantized_model: ", prefix, " has no weight in ", source.string());
  if (!group_overrides.empty()) {
    std::string list;
    for (const auto& [p, g] : group_overrides) list += str(list.empty() ? "" : ", ", p, " (g", g, ")");
    log::warn("quantize: ", group_overrides.size(), " layer(s) use a smaller group size than ",
              spec.group_size, " because it does not divide their input size: ", list,
              ". refine runs the model, but vLLM and transformers read one group_size and will "
              "refuse it; for them, requantize with the largest group size dividing every layer");
  }

  // modules_to_not_convert: what stayed dense, plus routers and shared-expert gates (transformers
  // would otherwise replace them as they are nn.Linear in some families).
  std::vector<std::string> skip = parts.not_converted;
  for (const std::string& name : ckpt.names()) {
    const bool router = ends_with(name, ".mlp.gate.weight") ||
                        ends_with(name, ".block_sparse_moe.gate.weight") ||
                        ends_with(name, ".shared_expert_gate.weight");
    if (router) skip.push_back(name.substr(0, name.size() - 7));
  }
  std::sort(skip.begin(), skip.end());
  skip.erase(std::unique(skip.begin(), skip.end()), skip.end());
  config["quantization_config"] = quantization_config(spec, skip);

  // Build the directory under a temporary name beside out_dir, then rename it into place.
  io::StagedModelDirectory staged(out_dir);
  const fs::path& tmp = staged.path();
  const fs::path& target = staged.target();
  const io::CheckpointWriteResult written = io::write_checkpoint(tmp, tensors);
  io::write_file_atomically(tmp / "config.json", config.dump(2) + "\n");
  for (const char* f : kCopiedFiles)
    if (fs::is_regular_file(source / f)) fs::copy_file(source / f, tmp / f);
  nlohmann::json prov = provenance.is_null() ? nlohmann::json::object() : provenance;
  if (!prov.contains("parent")) prov["parent"] = source.string();
  prov["quantization"] = {{"method_format", "awq-gemm"},
                          {"bits", spec.bits},
                          {"group_size", spec.group_size},
                          {"zero_point", spec.zero_point},
                          {"quantized_linears", parts.quantized.size()},
                          {"not_converted", parts.not_converted},
                          {"group_size_overrides", group_overrides},
                          {"bytes_before", ckpt.total_bytes()},
                          {"bytes_after", written.total_size}};
  io::write_file_atomically(tmp / "refinery.json", prov.dump(2) + "\n");

  staged.commit();
  log::info("quantize: wrote ", target.string(), " (", written.files.size(), " file(s), ",
            written.total_size, " bytes of tensors)");
}

}  // namespace refinery::quantize
