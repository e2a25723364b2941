// config.json of a pruned model (pruned_config.hpp).
#include "prune/pruned_config.hpp"

#include "engine/core/error.hpp"

namespace refinery::prune {

namespace {

bool is_deepseek(const model::ModelConfig& c) {
  return c.family == model::ModelFamily::kDeepseekV2 || c.family == model::ModelFamily::kDeepseekV3;
}

bool is_qwen_moe(const model::ModelConfig& c) {
  return c.family == model::ModelFamily::kQwen2Moe || c.family == model::ModelFamily::kQwen3Moe;
}

// Rewrites the keys that say which of the kept layers are MoE.
void set_moe_layers(nlohmann::json& j, const model::ModelConfig& c, const PrunePlan& plan) {
  std::vector<bool> moe;
  for (const LayerPlan& l : plan.layers) moe.push_back(c.layer_is_moe(l.source));
  const int n = static_cast<int>(moe.size());
  if (is_qwen_moe(c)) {
    std::vector<int> dense;
    for (int i = 0; i < n; ++i)
      if (!moe[static_cast<std::size_t>(i)]) dense.push_back(i);
    j["decoder_sparse_step"] = 1;
    j["mlp_only_layers"] = dense;
    return;
  }
  if (!is_deepseek(c)) return;  // mixtral: all MoE; dense families: none
  const int freq = c.moe->moe_layer_freq;
  for (int k = 0; k <= n; ++k) {
    bool match = true;
    for (int i = 0; i < n && match; ++i) match = moe[static_cast<std::size_t>(i)] == (i >= k && i % freq == 0);
    if (match) {
      j["first_k_dense_replace"] = k;
      return;
    }
  }
  std::string kinds;
  for (int i = 0; i < n; ++i) kinds += moe[static_cast<std::size_t>(i)] ? 'M' : 'D';
  throw_user_error("the kept layers are, in order, ", kinds, " (D dense, M MoE), which ", c.model_type,
                   "'s config cannot express (first_k_dense_replace dense layers, then MoE every ",
                   freq, "); keep more or other layers");
}

}  // namespace

nlohmann::json pruned_config(const nlohmann::json& parent, const model::ModelConfig& c,
                             const PrunePlan& plan) {
  nlohmann::json j = parent;
  const PlanShape s = plan_shape(c, plan);
  if (s.experts >= 0) {
    const char* key = is_deepseek(c) ? "n_routed_experts"
                      : c.family == model::ModelFamily::kMixtral ? "num_local_experts" : "num_experts";
    j[key] = s.experts;
    for (const char* alias : {"n_routed_experts", "num_local_experts", "num_experts"})
      if (j.contains(alias) && !j[alias].is_null()) j[alias] = s.experts;
  }
  if (s.mlp_width >= 0) j["intermediate_size"] = s.mlp_width;
  if (s.expert_width >= 0)
    j[c.family == model::ModelFamily::kMixtral ? "intermediate_size" : "moe_intermediate_size"] = s.expert_width;
  if (s.shared_width >= 0 && is_qwen_moe(c)) j["shared_expert_intermediate_size"] = s.shared_width;
  if (s.layers != c.num_layers) {
    j["num_hidden_layers"] = s.layers;
    if (c.moe) set_moe_layers(j, c, plan);
    if (j.contains("layer_types") && j["layer_types"].is_array() &&
        static_cast<int>(j["layer_types"].size()) == c.num_layers) {
      nlohmann::json kept = nlohmann::json::array();
      for (const LayerPlan& l : plan.layers) kept.push_back(j["layer_types"][static_cast<std::size_t>(l.source)]);
      j["layer_types"] = kept;
    }
  }
  const bool mla = c.attention.kind == model::AttentionKind::kMla;
  if (s.heads >= 0) {
    j["num_attention_heads"] = s.heads;
    j["num_key_value_heads"] = mla ? s.heads : s.kv_heads;
  }
  if (s.hidden >= 0) j["hidden_size"] = s.hidden;
  // transformers derives a missing head_dim as hidden_size / num_attention_heads (llama, mistral,
  // mixtral, qwen2, qwen2_moe), which both options change: keep the parent's width explicit.
  // MLA widths come from qk_nope/qk_rope/v_head_dim, which no option changes.
  if ((s.heads >= 0 || s.hidden >= 0) && !mla) j["head_dim"] = c.attention.head_dim;
  if (j.contains("num_nextn_predict_layers") && j["num_nextn_predict_layers"].is_number_integer() &&
      j["num_nextn_predict_layers"].get<int>() > 0)
    j["num_nextn_predict_layers"] = 0;
  return j;
}

}  // namespace refinery::prune
