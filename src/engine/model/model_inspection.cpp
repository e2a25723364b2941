#include "engine/model/model_inspection.hpp"

#include <fstream>

#include "engine/core/error.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace refinery::model {
namespace {

std::string read_architecture(const std::filesystem::path& directory) {
  std::ifstream in(directory / "config.json");
  const auto json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (json.is_object() && json.contains("architectures") && json["architectures"].is_array() &&
      !json["architectures"].empty() && json["architectures"][0].is_string())
    return json["architectures"][0].get<std::string>();
  return "";
}

std::string format_number(double value) {
  // Integers print without a decimal point; others with up to 4 significant digits.
  if (value == static_cast<int64_t>(value)) return std::to_string(static_cast<int64_t>(value));
  return str(value);
}

}  // namespace

int64_t kv_cache_bytes_per_token(const ModelConfig& config, int bytes_per_element) {
  const AttentionConfig& a = config.attention;
  const int64_t per_layer = a.kind == AttentionKind::kMla
                                ? int64_t{a.kv_lora_rank} + a.qk_rope_head_dim
                                : int64_t{2} * a.num_kv_heads * a.head_dim;
  return per_layer * config.num_layers * bytes_per_element;
}

std::vector<std::string> describe_layers(const ModelConfig& config) {
  const int moe_layers = config.num_moe_layers();
  const int dense_layers = config.num_layers - moe_layers;
  std::vector<std::string> lines;
  if (dense_layers > 0)
    lines.push_back(str(dense_layers, " dense (SwiGLU ", config.intermediate_size, ")"));
  if (moe_layers > 0) {
    const MoeConfig& m = *config.moe;
    std::string line = str(moe_layers, " MoE (", m.num_experts, " routed experts x ",
                           m.expert_intermediate_size, ", top-", m.experts_per_token);
    if (m.num_shared_experts > 0 || m.shared_intermediate_size > 0)
      line += str(", shared ", m.shared_intermediate_size, m.shared_expert_gate ? " gated" : "");
    line += m.scoring == RouterScoring::kSigmoid ? ", sigmoid" : ", softmax";
    if (m.topk_method == TopkMethod::kGroupLimitedGreedy || m.topk_method == TopkMethod::kNoauxTc)
      line += str(", ", m.n_group, " groups/top-", m.topk_group);
    if (m.score_correction_bias) line += ", score-correction bias";
    if (m.norm_topk_prob) line += ", renormalized";
    if (m.routed_scaling_factor != 1.0) line += str(", scaled x", format_number(m.routed_scaling_factor));
    lines.push_back(line + ")");
  }
  return lines;
}

std::string describe_attention(const ModelConfig& config) {
  const AttentionConfig& a = config.attention;
  if (a.kind == AttentionKind::kMla) {
    return str("MLA: ", a.num_heads, " heads, q_lora ",
               a.q_lora_rank ? std::to_string(*a.q_lora_rank) : std::string("none"), ", kv_lora ",
               a.kv_lora_rank, ", qk nope/rope ", a.qk_nope_head_dim, "/", a.qk_rope_head_dim,
               ", v ", a.v_head_dim);
  }
  std::string kind = a.num_kv_heads == a.num_heads ? "MHA" : (a.num_kv_heads == 1 ? "MQA" : "GQA");
  std::string line = str(kind, ": ", a.num_heads, " heads / ", a.num_kv_heads, " kv, head_dim ",
                         a.head_dim);
  if (a.qkv_bias) line += ", qkv bias";
  if (a.qk_norm) line += ", q/k norm";
  if (config.sliding_window) line += str(", sliding window ", *config.sliding_window);
  return line;
}

std::string describe_rope(const ModelConfig& config) {
  const RopeConfig& r = config.rope;
  std::string line = rope_type_name(r.type);
  if (r.type != RopeType::kDefault) line += str(" x", format_number(r.factor));
  line += str(" (theta ", format_number(r.theta));
  if (r.type == RopeType::kYarn || r.type == RopeType::kLlama3)
    line += str(", original context ", r.original_max_position_embeddings);
  line += r.pairing == RopePairing::kInterleaved ? ", interleaved pairs" : ", half-split pairs";
  return line + ")";
}

ModelInspection inspect_model(const std::filesystem::path& directory) {
  ModelInspection result;
  result.directory = directory;
  result.config = load_model_config(directory);
  result.architecture = read_architecture(directory);
  result.from_config = count_parameters(result.config);

  const io::Checkpoint checkpoint = io::Checkpoint::open(directory);
  CheckpointParameterTally tally(result.config);
  for (const std::string& name : checkpoint.names()) {
    const auto located = checkpoint.find(name);
    REFINERY_CHECK(located.has_value(), name);
    const io::TensorEntry& entry = *located->entry;
    tally.add(name, entry.shape);
    const int64_t bytes = static_cast<int64_t>(entry.data_end - entry.data_begin);
    result.bytes_by_dtype[std::string(dtype_name(entry.dtype))] += bytes;
    result.tensor_bytes += bytes;
    ++result.num_tensors;
  }
  result.from_tensors = tally.counts();
  result.unrecognized_tensors = tally.unrecognized();
  result.kv_cache_bytes_per_token = kv_cache_bytes_per_token(result.config, 2);

  if (std::filesystem::exists(directory / "tokenizer.json"))
    result.tokenizer_vocab_size =
        static_cast<int64_t>(tokenizer::Tokenizer::load(directory / "tokenizer.json").vocab_size());
  return result;
}

}  // namespace refinery::model
