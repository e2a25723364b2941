#include "quantize/awq_groups.hpp"

namespace refinery::quantize {

std::string input_tap_of(const std::string& hf_prefix) {
  const std::string name = hf_prefix.rfind("model.", 0) == 0 ? hf_prefix.substr(6) : hf_prefix;
  return name + ".input";
}

std::vector<ScaleGroup> scale_groups(const model::ModelConfig& config,
                                     const model::ModelWeights& weights, int layer,
                                     const GroupOptions& options) {
  const model::LayerWeights& lw = weights.layers.at(static_cast<std::size_t>(layer));
  const model::AttentionWeights& a = lw.attention;
  const std::string base = "model.layers." + std::to_string(layer);
  const std::string short_base = "layers." + std::to_string(layer);
  std::vector<ScaleGroup> groups;

  if (config.attention.kind == model::AttentionKind::kMla) {
    const bool lora = a.q_a_proj.defined();
    const backend::LinearWeight& q_in = lora ? a.q_a_proj : a.q_proj;
    const std::string attn_in = input_tap_of(q_in.name);
    groups.push_back({short_base + ".self_attn.qkv_a", base + ".input_layernorm.weight", "",
                      {q_in.name, a.kv_a_proj_with_mqa.name}, {}, Inspect::kAttention,
                      attn_in, std::nullopt});
    if (lora)
      groups.push_back({short_base + ".self_attn.q_b", base + ".self_attn.q_a_layernorm.weight",
                        "", {a.q_b_proj.name}, {}, Inspect::kLinears,
                        input_tap_of(a.q_b_proj.name), std::nullopt});
    groups.push_back({short_base + ".self_attn.kv_b", base + ".self_attn.kv_a_layernorm.weight", "",
                      {a.kv_b_proj.name}, {}, Inspect::kLinears, input_tap_of(a.kv_b_proj.name),
                      std::nullopt});
    if (options.mla_o_group) {
      // o_proj's input channel h·dv + d is head h's value d: kv_b_proj's row h·(dn+dv) + dn + d
      // (scaling V scales the attention output, softmax weights being untouched).
      const int64_t heads = config.attention.num_heads, dn = config.attention.qk_nope_head_dim,
                    dv = config.attention.v_head_dim;
      ScaleGroup o{short_base + ".self_attn.o", "", a.kv_b_proj.name, {a.o_proj.name}, {},
                   Inspect::kLinears, input_tap_of(a.o_proj.name), std::nullopt};
      if (a.o_proj.in_features() == heads * dv && a.kv_b_proj.out_features() == heads * (dn + dv)) {
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t d = 0; d < dv; ++d) o.prev_rows.push_back(h * (dn + dv) + dn + d);
        groups.push_back(std::move(o));
      }
    }
    if (options.block_loss)
      for (auto& g : groups)
        if (g.inspect == Inspect::kLinears) {
          g.inspect = Inspect::kAttention;
          g.inspect_tap = attn_in;
        }
  } else {
    groups.push_back({short_base + ".self_attn.qkv", base + ".input_layernorm.weight", "",
                      {a.q_proj.name, a.k_proj.name, a.v_proj.name}, {}, Inspect::kAttention,
                      input_tap_of(a.q_proj.name), std::nullopt});
    if (a.v_proj.out_features() == a.o_proj.out_features() &&
        a.v_proj.in_features() == a.o_proj.in_features())
      groups.push_back({short_base + ".self_attn.o", "", a.v_proj.name, {a.o_proj.name}, {},
                        Inspect::kLinears, input_tap_of(a.o_proj.name), std::nullopt});
    if (options.block_loss && groups.back().inspect == Inspect::kLinears) {
      groups.back().inspect = Inspect::kAttention;
      groups.back().inspect_tap = input_tap_of(a.q_proj.name);
    }
  }

  const std::string post_norm = base + ".post_attention_layernorm.weight";
  if (lw.mlp) {
    const model::MlpWeights& m = *lw.mlp;
    groups.push_back({short_base + ".mlp.gate_up", post_norm, "", {m.gate_proj.name, m.up_proj.name},
                      {}, Inspect::kMlp, input_tap_of(m.gate_proj.name), std::nullopt});
    groups.push_back({short_base + ".mlp.down", "", m.up_proj.name, {m.down_proj.name}, {},
                      Inspect::kLinears, input_tap_of(m.down_proj.name), std::nullopt});
    if (options.block_loss) {
      groups.back().inspect = Inspect::kMlp;
      groups.back().inspect_tap = input_tap_of(m.gate_proj.name);
    }
    return groups;
  }
  const model::MoeWeights& moe = *lw.moe;
  ScaleGroup gate_up{short_base + ".mlp.experts_gate_up", post_norm, "", {}, {moe.router.name},
                     Inspect::kMlp, input_tap_of(moe.router.name), std::nullopt};
  for (const auto& e : moe.experts) {
    gate_up.linears.push_back(e.gate.name);
    gate_up.linears.push_back(e.up.name);
  }
  if (moe.shared) {
    gate_up.linears.push_back(moe.shared->gate_proj.name);
    gate_up.linears.push_back(moe.shared->up_proj.name);
  }
  if (moe.shared_gate.defined()) gate_up.passengers.push_back(moe.shared_gate.name);
  groups.push_back(std::move(gate_up));
  for (std::size_t e = 0; e < moe.experts.size(); ++e)
    groups.push_back({short_base + ".mlp.experts." + std::to_string(e) + ".down", "",
                      moe.experts[e].up.name, {moe.experts[e].down.name}, {}, Inspect::kLinears,
                      "", static_cast<int>(e)});
  if (moe.shared) {
    groups.push_back({short_base + ".mlp.shared.down", "", moe.shared->up_proj.name,
                      {moe.shared->down_proj.name}, {}, Inspect::kLinears,
                      input_tap_of(moe.shared->down_proj.name), std::nullopt});
    if (options.block_loss) {
      groups.back().inspect = Inspect::kMlp;
      groups.back().inspect_tap = input_tap_of(moe.router.name);
    }
  }
  return groups;
}

}  // namespace refinery::quantize
