#pragma once
// config.json of a pruned model: the parent's JSON with the counts a plan changes, in the keys of
// the parent's family, so that transformers builds exactly the pruned shapes.
//
//   experts   n_routed_experts (deepseek) / num_local_experts (mixtral) / num_experts (qwen*_moe);
//             num_experts_per_tok, n_group, topk_group unchanged (the plan keeps them valid)
//   widths    intermediate_size (dense MLP; mixtral: its experts), moe_intermediate_size,
//             shared_expert_intermediate_size (qwen2_moe; deepseek's follows moe_intermediate_size)
//   layers    num_hidden_layers; which layers are MoE is re-expressed for the kept sequence:
//             qwen*_moe: decoder_sparse_step 1 + mlp_only_layers listing the dense ones;
//             deepseek: first_k_dense_replace (with the parent's moe_layer_freq), a user error
//             when the kept sequence is not "k dense layers, then the MoE pattern";
//             layer_types (qwen2/qwen3) sliced to the kept layers.
//   heads     num_attention_heads, num_key_value_heads (MLA: equal to the heads)
//   hidden    hidden_size
//   head_dim  written explicitly (the parent's width) when heads or hidden change and the model is
//             not MLA, since transformers would otherwise derive hidden_size / num_attention_heads
//   MTP       num_nextn_predict_layers 0 (the MTP layers are not carried over, see apply.hpp).

#include <nlohmann/json.hpp>

#include "engine/model/model_config.hpp"
#include "prune/plan.hpp"

namespace refinery::prune {

nlohmann::json pruned_config(const nlohmann::json& parent, const model::ModelConfig& config,
                             const PrunePlan& plan);

}  // namespace refinery::prune
