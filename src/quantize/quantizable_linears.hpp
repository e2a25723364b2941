#pragma once
// Which linears of a model a quantization pass converts (DESIGN §4): every linear inside the
// decoder layers (attention projections incl. MLA q_a/q_b/kv_a_proj_with_mqa/kv_b, dense MLP
// gate/up/down, every routed expert's and the shared experts' gate/up/down). Never: the
// embedding, lm_head, norms, MoE routers (mlp.gate / block_sparse_moe.gate) and qwen2_moe's
// shared_expert_gate; those are listed by never_quantized_linears for modules_to_not_convert.

#include <string>
#include <vector>

#include "engine/model/model_weights.hpp"

namespace refinery::quantize {

struct LinearSite {
  std::string prefix;           // HF module name, e.g. "model.layers.0.self_attn.q_proj"
  const backend::LinearWeight* weight = nullptr;  // into the ModelWeights given
  int64_t out = 0, in = 0;
};

// In layer order, attention before MLP, experts in index order.
std::vector<LinearSite> quantizable_linears(const model::ModelWeights& weights);

// Module names of the linears inside the layers that stay unquantized by design (routers,
// shared-expert gates), for modules_to_not_convert (transformers would otherwise replace every
// nn.Linear). Full prefixes: vLLM/transformers match by substring, and a full prefix such as
// "model.layers.1.mlp.gate" matches no other module of that layer.
std::vector<std::string> never_quantized_linears(const model::ModelWeights& weights);

}  // namespace refinery::quantize
