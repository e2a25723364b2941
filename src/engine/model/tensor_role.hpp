#pragma once
// What a checkpoint tensor is, from its Hugging Face name (and the config, for MTP layers).
//
// Names handled (prefix `model.layers.N.`):
//   self_attn.{q,k,v,o}_proj, q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj      -> attention
//   input_layernorm, post_attention_layernorm, self_attn.{q,k}_norm,
//   self_attn.{q_a,kv_a}_layernorm, model.norm                                          -> norm
//   mlp.{gate,up,down}_proj                                                              -> dense MLP
//   mlp.experts.E.{gate,up,down}_proj, block_sparse_moe.experts.E.w{1,2,3} (mixtral)    -> routed, expert E
//   mlp.experts.{gate_up_proj,down_proj}[...] (transformers 5.x fused [E, ...])         -> routed, all experts
//   mlp.gate / block_sparse_moe.gate (weight, e_score_correction_bias)                  -> router
//   mlp.shared_expert.*, mlp.shared_expert_gate (qwen2_moe), mlp.shared_experts.*       -> shared experts
//   model.embed_tokens, lm_head                                                          -> embedding, lm_head
//   model.layers.N with N >= num_hidden_layers (DeepSeek-V3 multi-token prediction)      -> mtp
// The last name part says the storage role: weight / bias / e_score_correction_bias (parameters),
// FP8 `weight_scale_inv`, AWQ `qweight` / `qzeros` / `scales`.

#include <string>
#include <string_view>

namespace refinery::model {

struct ModelConfig;

enum class Component {
  kEmbedding,
  kAttention,
  kDenseMlp,
  kRoutedExperts,
  kSharedExperts,
  kRouter,
  kNorm,
  kLmHead,
  kMtp,
  kOther,  // a name we do not recognize (counted in the total, reported by name)
};
const char* component_name(Component component);

enum class TensorKind {
  kWeight,       // a parameter: weight matrix/vector, fused expert tensor, correction bias
  kBias,
  kFp8ScaleInv,  // f32 per-block scale of an FP8 weight: metadata, not parameters
  kAwqQweight,   // int32 words packing 32/bits weights each
  kAwqQzeros,    // metadata
  kAwqScales,    // metadata
};

struct TensorRole {
  Component component = Component::kOther;
  TensorKind kind = TensorKind::kWeight;
  int layer = -1;               // decoder layer index, -1 for model-level tensors
  int expert = -1;              // routed expert index, -1 when not per-expert
  bool fused_experts = false;   // one tensor holds every routed expert of the layer (dim 0 = expert)
};

TensorRole classify_tensor(std::string_view name, const ModelConfig& config);

}  // namespace refinery::model
