#include "engine/model/parameter_count.hpp"

#include "engine/backend/linear_weight.hpp"
#include "engine/core/error.hpp"
#include "engine/model/model_config.hpp"

namespace refinery::model {

int64_t ParameterCounts::total() const {
  return embedding + attention + dense_mlp + routed_experts + shared_experts + routers + norms + lm_head + other;
}

int64_t ParameterCounts::active() const { return total() - routed_experts + routed_experts_active; }

namespace {

// One SwiGLU MLP: gate [inter, hidden], up [inter, hidden], down [hidden, inter] (+ biases).
int64_t swiglu(int64_t hidden, int64_t inter, bool bias) {
  return 3 * hidden * inter + (bias ? 2 * inter + hidden : 0);
}

struct LayerCounts {
  int64_t attention = 0, norms = 0;
};

LayerCounts attention_layer(const ModelConfig& c) {
  const AttentionConfig& a = c.attention;
  const int64_t h = c.hidden_size, heads = a.num_heads;
  LayerCounts out;
  out.norms = 2 * h;  // input_layernorm, post_attention_layernorm
  if (a.kind == AttentionKind::kGqa) {
    const int64_t q = heads * a.head_dim, kv = int64_t{a.num_kv_heads} * a.head_dim;
    out.attention = h * q + 2 * h * kv + q * h;
    if (a.qkv_bias) out.attention += q + 2 * kv;
    if (a.o_bias) out.attention += h;
    if (a.qk_norm) out.norms += 2 * int64_t{a.head_dim};
  } else {
    const int64_t qk = a.qk_nope_head_dim + a.qk_rope_head_dim;
    if (a.q_lora_rank) {
      const int64_t r = *a.q_lora_rank;
      out.attention += h * r + (a.lora_a_bias ? r : 0) + r * heads * qk;  // q_a_proj, q_b_proj
      out.norms += r;                                                      // q_a_layernorm
    } else {
      out.attention += h * heads * qk;  // q_proj
    }
    const int64_t kv_a = int64_t{a.kv_lora_rank} + a.qk_rope_head_dim;
    out.attention += h * kv_a + (a.lora_a_bias ? kv_a : 0);                       // kv_a_proj_with_mqa
    out.attention += int64_t{a.kv_lora_rank} * heads * (a.qk_nope_head_dim + a.v_head_dim);  // kv_b_proj
    out.attention += heads * a.v_head_dim * h + (a.o_bias ? h : 0);               // o_proj
    out.norms += a.kv_lora_rank;                                                  // kv_a_layernorm
  }
  return out;
}

struct MoeLayerCounts {
  int64_t routed = 0, shared = 0, router = 0;
};

MoeLayerCounts moe_layer(const ModelConfig& c) {
  const MoeConfig& e = *c.moe;
  const int64_t h = c.hidden_size;
  MoeLayerCounts out;
  out.routed = int64_t{e.num_experts} * swiglu(h, e.expert_intermediate_size, false);
  out.router = int64_t{e.num_experts} * h + (e.score_correction_bias ? e.num_experts : 0);
  if (e.num_shared_experts > 0) out.shared = swiglu(h, e.shared_intermediate_size, false);
  if (e.shared_expert_gate) out.shared += h;  // shared_expert_gate [1, hidden]
  return out;
}

}  // namespace

ParameterCounts count_parameters(const ModelConfig& c) {
  ParameterCounts p;
  const int64_t h = c.hidden_size;
  p.embedding = int64_t{c.vocab_size} * h;
  p.lm_head = c.tie_word_embeddings ? 0 : int64_t{c.vocab_size} * h;
  p.norms = h;  // final norm
  const LayerCounts layer = attention_layer(c);
  for (int l = 0; l < c.num_layers; ++l) {
    p.attention += layer.attention;
    p.norms += layer.norms;
    if (c.layer_is_moe(l)) {
      MoeLayerCounts m = moe_layer(c);
      p.routed_experts += m.routed;
      p.shared_experts += m.shared;
      p.routers += m.router;
    } else {
      p.dense_mlp += swiglu(h, c.intermediate_size, c.mlp_bias);
    }
  }
  if (c.moe) p.routed_experts_active = p.routed_experts / c.moe->num_experts * c.moe->experts_per_token;
  // MTP layer: a full MoE decoder layer + enorm, hnorm [hidden] + eh_proj [hidden, 2*hidden] +
  // shared_head.norm [hidden]; its embedding and head are shared with the main model.
  if (c.num_mtp_layers > 0 && c.moe) {
    MoeLayerCounts m = moe_layer(c);
    p.mtp = int64_t{c.num_mtp_layers} * (layer.attention + layer.norms + m.routed + m.shared + m.router +
                                         3 * h + 2 * h * h);
  }
  return p;
}

int64_t logical_parameters(const TensorRole& role, const std::vector<int64_t>& shape, const ModelConfig& c) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) throw_user_error("a tensor shape has a negative dimension (", d, ")");
    numel *= d;
  }
  switch (role.kind) {
    case TensorKind::kWeight:
    case TensorKind::kBias: return numel;
    case TensorKind::kAwqQweight: {
      const int bits = c.quant.method == QuantMethod::kAwq ? c.quant.bits : 4;
      // int32 words of packed codes: 8 per word for 4 bits and for 3 bits (4-bit slots), 4 for 8.
      return numel * backend::awq_pack_factor(bits);
    }
    case TensorKind::kFp8ScaleInv:
    case TensorKind::kAwqQzeros:
    case TensorKind::kAwqScales: return 0;
  }
  return numel;
}

TensorRole CheckpointParameterTally::add(std::string_view name, const std::vector<int64_t>& shape) {
  TensorRole role = classify_tensor(name, *config_);
  const int64_t n = logical_parameters(role, shape, *config_);
  switch (role.component) {
    case Component::kEmbedding: counts_.embedding += n; break;
    case Component::kAttention: counts_.attention += n; break;
    case Component::kDenseMlp: counts_.dense_mlp += n; break;
    case Component::kRoutedExperts: counts_.routed_experts += n; break;
    case Component::kSharedExperts: counts_.shared_experts += n; break;
    case Component::kRouter: counts_.routers += n; break;
    case Component::kNorm: counts_.norms += n; break;
    case Component::kLmHead: counts_.lm_head += n; break;
    case Component::kMtp: counts_.mtp += n; break;
    case Component::kOther:
      counts_.other += n;
      unrecognized_.emplace_back(name);
      break;
  }
  return role;
}

ParameterCounts CheckpointParameterTally::counts() const {
  ParameterCounts p = counts_;
  // Every expert of a layer has the same shape, so the active share is exactly k/E of the total.
  if (config_->moe) p.routed_experts_active = p.routed_experts / config_->moe->num_experts * config_->moe->experts_per_token;
  return p;
}

}  // namespace refinery::model
