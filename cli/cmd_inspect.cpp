// `refine inspect MODEL [--json]`: architecture, layer kinds, parameters total and active per token,
// bytes by dtype, and the memory the model needs (DESIGN §6).
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "engine/core/log.hpp"
#include "engine/core/progress.hpp"
#include "engine/model/model_inspection.hpp"

namespace refinery::cli {
namespace {

using model::ModelInspection;

nlohmann::json counts_json(const model::ParameterCounts& c) {
  return {{"embedding", c.embedding},         {"attention", c.attention},
          {"dense_mlp", c.dense_mlp},         {"routed_experts", c.routed_experts},
          {"shared_experts", c.shared_experts}, {"routers", c.routers},
          {"norms", c.norms},                 {"lm_head", c.lm_head},
          {"mtp", c.mtp},                     {"other", c.other}};
}

nlohmann::json to_json(const ModelInspection& m) {
  const model::ModelConfig& c = m.config;
  nlohmann::json j;
  j["model"] = m.directory.string();
  j["model_type"] = c.model_type;
  j["architecture"] = m.architecture;
  j["layers"] = c.num_layers;
  j["moe_layers"] = c.num_moe_layers();
  j["layer_kinds"] = model::describe_layers(c);
  j["attention"] = model::describe_attention(c);
  j["rope"] = model::describe_rope(c);
  j["hidden_size"] = c.hidden_size;
  j["vocab_size"] = c.vocab_size;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["params_total"] = m.from_tensors.total();
  j["params_active"] = m.from_tensors.active();
  j["params_active_excluding_embedding"] = m.from_tensors.active_excluding_embedding();
  j["params_by_component"] = counts_json(m.from_tensors);
  j["params_expected_from_config"] = m.from_config.total();
  j["bytes"] = m.tensor_bytes;
  j["bytes_by_dtype"] = m.bytes_by_dtype;
  j["tensors"] = m.num_tensors;
  j["unrecognized_tensors"] = m.unrecognized_tensors;
  j["kv_cache_bytes_per_token"] = m.kv_cache_bytes_per_token;
  j["memory_weights_bytes"] = m.tensor_bytes;
  j["quantization"] = c.quant.method == model::QuantMethod::kNone    ? "none"
                      : c.quant.method == model::QuantMethod::kFp8Block ? "fp8-block"
                                                                       : "awq";
  if (m.tokenizer_vocab_size) j["tokenizer_vocab_size"] = *m.tokenizer_vocab_size;
  return j;
}

void print_text(const ModelInspection& m) {
  const model::ModelConfig& c = m.config;
  auto row = [](const std::string& key, const std::string& value) {
    std::cout << key << std::string(key.size() < 13 ? 13 - key.size() : 1, ' ') << value << "\n";
  };
  auto count_with_exact = [](int64_t n) {
    return str(human_count(static_cast<double>(n)), " (", n, ")");
  };
  row("model", m.directory.string());
  row("type", c.model_type + (m.architecture.empty() ? "" : " (" + m.architecture + ")"));
  row("hidden", str(c.hidden_size, ", vocab ", c.vocab_size,
                    c.tie_word_embeddings ? ", tied embeddings" : ", untied lm_head"));
  const auto layer_lines = model::describe_layers(c);
  for (std::size_t i = 0; i < layer_lines.size(); ++i)
    row(i == 0 ? str("layers ", c.num_layers) : "", layer_lines[i]);
  row("attention", model::describe_attention(c));
  row("rope", model::describe_rope(c));
  if (c.quant.method != model::QuantMethod::kNone)
    row("quantized", c.quant.method == model::QuantMethod::kFp8Block ? "FP8 E4M3, 128x128 block scales"
                                                                     : str("AWQ W", c.quant.bits, " g",
                                                                           c.quant.group_size));
  row("params", str(count_with_exact(m.from_tensors.total()), " total, ",
                    count_with_exact(m.from_tensors.active()), " active per token"));
  const auto& p = m.from_tensors;
  row("", str("embedding ", human_count(p.embedding), ", attention ", human_count(p.attention),
              ", dense MLP ", human_count(p.dense_mlp), ", routed experts ",
              human_count(p.routed_experts), ", shared experts ", human_count(p.shared_experts),
              ", routers ", human_count(p.routers), ", norms ", human_count(p.norms), ", lm_head ",
              human_count(p.lm_head)));
  if (p.mtp > 0) row("", str("+ ", human_count(p.mtp), " in multi-token-prediction layers (unused)"));
  std::string by_dtype;
  for (const auto& [dtype, bytes] : m.bytes_by_dtype)
    by_dtype += str(by_dtype.empty() ? "" : ", ", dtype, " ", human_bytes(bytes));
  row("bytes", str(human_bytes(m.tensor_bytes), " in ", m.num_tensors, " tensors (", by_dtype, ")"));
  row("memory", str("weights ", human_bytes(m.tensor_bytes), " + KV cache (bf16) ",
                    human_bytes(m.kv_cache_bytes_per_token), " per token of context = ",
                    human_bytes(m.kv_cache_bytes_per_token * 4096.0), " per 4096-token sequence"));
  if (m.tokenizer_vocab_size) row("tokenizer", str("vocab ", *m.tokenizer_vocab_size));
}

}  // namespace

void register_inspect(CLI::App& app) {
  struct Options {
    std::string model;
    bool json = false;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand(
      "inspect", "Describe a model: architecture, parameters total/active, bytes, memory");
  cmd->footer("Example:\n  refine inspect models/demo-tiny-deepseek-v3\n"
              "  refine inspect models/demo-tiny-deepseek-v3 --json | jq .params_active");
  cmd->add_option("MODEL", options->model, "A Hugging Face model directory")->required();
  cmd->add_flag("--json", options->json, "Print one JSON object");
  cmd->callback([options] {
    const ModelInspection inspection = model::inspect_model(options->model);
    if (inspection.from_tensors.total() != inspection.from_config.total())
      log::warn(options->model, ": the checkpoint holds ", inspection.from_tensors.total(),
                " parameters but config.json implies ", inspection.from_config.total(),
                "; tensors may be missing or extra");
    if (!inspection.unrecognized_tensors.empty())
      log::warn(options->model, ": ", inspection.unrecognized_tensors.size(),
                " tensors are not part of a ", inspection.config.model_type, " model, e.g. ",
                inspection.unrecognized_tensors.front());
    if (options->json)
      std::cout << to_json(inspection).dump(2) << "\n";
    else
      print_text(inspection);
  });
}

}  // namespace refinery::cli
