#include "engine/model/tensor_role.hpp"

#include <charconv>

#include "engine/model/model_config.hpp"

namespace refinery::model {

const char* component_name(Component component) {
  switch (component) {
    case Component::kEmbedding: return "embedding";
    case Component::kAttention: return "attention";
    case Component::kDenseMlp: return "dense_mlp";
    case Component::kRoutedExperts: return "routed_experts";
    case Component::kSharedExperts: return "shared_experts";
    case Component::kRouter: return "router";
    case Component::kNorm: return "norm";
    case Component::kLmHead: return "lm_head";
    case Component::kMtp: return "mtp";
    case Component::kOther: return "other";
  }
  return "?";
}

namespace {

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }
bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Reads a decimal index at the front of `s` followed by '.', advancing past both.
bool take_index(std::string_view& s, int& out) {
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, out);
  if (ec != std::errc() || ptr == s.data() || ptr == end || *ptr != '.' || out < 0) return false;
  s.remove_prefix(static_cast<size_t>(ptr - s.data()) + 1);
  return true;
}

TensorKind kind_of(std::string_view name) {
  if (ends_with(name, "weight_scale_inv") || ends_with(name, "_scale_inv")) return TensorKind::kFp8ScaleInv;
  if (ends_with(name, ".qweight")) return TensorKind::kAwqQweight;
  if (ends_with(name, ".qzeros")) return TensorKind::kAwqQzeros;
  if (ends_with(name, ".scales")) return TensorKind::kAwqScales;
  if (ends_with(name, ".bias") && !ends_with(name, "e_score_correction_bias")) return TensorKind::kBias;
  return TensorKind::kWeight;
}

// `rest` is the part after `model.layers.N.`.
void classify_layer_part(std::string_view rest, TensorRole& role) {
  if (starts_with(rest, "input_layernorm.") || starts_with(rest, "post_attention_layernorm.")) {
    role.component = Component::kNorm;
    return;
  }
  if (starts_with(rest, "self_attn.")) {
    std::string_view a = rest.substr(10);
    bool norm = starts_with(a, "q_norm.") || starts_with(a, "k_norm.") || starts_with(a, "q_a_layernorm.") ||
                starts_with(a, "kv_a_layernorm.");
    role.component = norm ? Component::kNorm : Component::kAttention;
    return;
  }
  std::string_view m;
  if (starts_with(rest, "mlp.")) {
    m = rest.substr(4);
  } else if (starts_with(rest, "block_sparse_moe.")) {
    m = rest.substr(17);
  } else {
    return;  // kOther
  }
  if (starts_with(m, "gate.")) {
    role.component = Component::kRouter;
  } else if (starts_with(m, "shared_expert_gate.") || starts_with(m, "shared_expert.") ||
             starts_with(m, "shared_experts.")) {
    role.component = Component::kSharedExperts;
  } else if (starts_with(m, "experts.")) {
    role.component = Component::kRoutedExperts;
    std::string_view e = m.substr(8);
    int expert = -1;
    if (take_index(e, expert)) {
      role.expert = expert;
    } else {
      role.fused_experts = true;  // experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]
    }
  } else if (starts_with(m, "gate_proj.") || starts_with(m, "up_proj.") || starts_with(m, "down_proj.")) {
    role.component = Component::kDenseMlp;
  }
}

}  // namespace

TensorRole classify_tensor(std::string_view name, const ModelConfig& config) {
  TensorRole role;
  role.kind = kind_of(name);
  if (name == "lm_head.weight" || starts_with(name, "lm_head.")) {
    role.component = Component::kLmHead;
    return role;
  }
  if (!starts_with(name, "model.")) return role;
  std::string_view rest = name.substr(6);
  if (starts_with(rest, "embed_tokens.")) {
    role.component = Component::kEmbedding;
  } else if (starts_with(rest, "norm.")) {
    role.component = Component::kNorm;
  } else if (starts_with(rest, "layers.")) {
    rest.remove_prefix(7);
    int layer = -1;
    if (!take_index(rest, layer)) return role;
    role.layer = layer;
    if (layer >= config.num_layers) {
      role.component = Component::kMtp;  // DeepSeek-V3 nextn layers (also their embed/head copies)
      return role;
    }
    classify_layer_part(rest, role);
  }
  return role;
}

}  // namespace refinery::model
