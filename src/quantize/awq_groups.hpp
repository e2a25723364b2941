#pragma once
// AWQ's scaling groups of one decoder layer (DESIGN §4, AutoAWQ's get_layers_for_scaling): the
// linears that read one input, the operation before them whose output channels absorb 1/s, and the
// module whose output measures the quantization error during the scale search.
//   GQA/MHA: q,k,v after input_layernorm (error of the attention block); o after v when
//            v_proj and o_proj have the same shape (no GQA), error of o itself.
//   MLA:     q (or q_a) with kv_a_proj_with_mqa after input_layernorm (attention block); q_b after
//            q_a_layernorm and kv_b after kv_a_layernorm (each its own output).
//   Dense:   gate,up after post_attention_layernorm (the MLP); down after up (down itself).
//   MoE:     every routed and shared expert's gate,up after post_attention_layernorm (error of
//            the whole MoE block); the router and qwen2_moe's shared_expert_gate read the same
//            input, so their columns are scaled too ("passengers": scaled, never quantized; the
//            router's logits stay exactly what they were, which AutoAWQ gets wrong); each
//            expert's down after its up, calibrated on ALL calibration tokens (not only those
//            routed to it), so that an expert that few tokens reach still gets real statistics.

#include <optional>
#include <string>
#include <vector>

#include "engine/model/model_config.hpp"
#include "engine/model/model_weights.hpp"

namespace refinery::quantize {

enum class Inspect {
  kAttention,  // the attention block's output for the group's input (input_layernorm output)
  kMlp,        // the MLP / MoE block's output (post_attention_layernorm output)
  kLinears,    // each linear's own output
};

struct ScaleGroup {
  std::string name;                 // for messages: "layers.3.mlp.gate_up"
  std::string prev_norm;            // HF tensor name of the RMSNorm weight absorbing 1/s, or ""
  std::string prev_linear;          // HF prefix of the linear whose output rows absorb 1/s, or ""
  std::vector<std::string> linears;     // HF prefixes, quantized, columns scaled by s
  std::vector<std::string> passengers;  // HF prefixes, columns scaled by s, not quantized
  Inspect inspect = Inspect::kLinears;
  // Where the group's input comes from: the tap name of the first linear's input, or, for a
  // routed expert's down projection, that expert index (its input is computed for all tokens).
  std::string input_tap;
  std::optional<int> expert_down;
  // The rows of prev_linear whose outputs feed s's channels, in s's order (empty: row j feeds
  // channel j). MLA's o group: kv_b_proj's value rows h·(dn+dv) + dn + d for channel h·dv + d.
  std::vector<int64_t> prev_rows;
  // When set, the inspected module (kAttention / kMlp) reads this tap instead of input_tap: a
  // single-linear group scored by its whole block (AwqOptions::block_loss).
  std::string inspect_tap;
};

struct GroupOptions {
  bool mla_o_group = false;  // AwqOptions::mla_o_group
  bool block_loss = false;   // AwqOptions::block_loss (not for routed experts' down: E block
                             // forwards per candidate)
};

std::vector<ScaleGroup> scale_groups(const model::ModelConfig& config,
                                     const model::ModelWeights& weights, int layer,
                                     const GroupOptions& options = {});

// "model.layers.3.self_attn.q_proj" -> "layers.3.self_attn.q_proj.input" (the Transformer's tap).
std::string input_tap_of(const std::string& hf_prefix);

}  // namespace refinery::quantize
