// MLP blocks: dense SwiGLU and MoE (router, routed experts, shared experts; FAMILY_NOTES §5).
#include <vector>

#include "engine/model/transformer.hpp"
#include "engine/model/transformer_step.hpp"

namespace refinery::model {

namespace {
std::string module_name(const std::string& hf_prefix) {
  return hf_prefix.rfind("model.", 0) == 0 ? hf_prefix.substr(6) : hf_prefix;
}
}  // namespace

Tensor Transformer::mlp(Step& s, const MlpWeights& w, const Tensor& h) {
  Tensor g = run_linear(s, h, w.gate_proj);
  Tensor u = run_linear(s, h, w.up_proj);
  backend_->swiglu(g, u, g);
  return run_linear(s, g, w.down_proj);
}

// The shared experts' output [T, hidden] of an MoE layer (w.shared defined), times
// sigmoid(shared_expert_gate(h)) where the model has that gate (qwen2_moe).
Tensor Transformer::shared_experts(Step& s, const MoeWeights& w, const Tensor& h) {
  Tensor shared = mlp(s, *w.shared, h);
  if (w.shared_gate.defined()) {
    Tensor g = run_linear(s, h, w.shared_gate);  // [T, 1]
    backend_->sigmoid_gate(shared, g, shared);
  }
  return shared;
}

Tensor Transformer::moe(Step& s, int layer, const Tensor& h) {
  const LayerWeights& lw = weights_.layers[static_cast<std::size_t>(layer)];
  const MoeWeights& w = *lw.moe;
  backend::Backend& be = *backend_;
  const int64_t t = s.tokens, k = router_.top_k, hidden = config_.hidden_size;
  const std::string gate = module_name(lw.mlp_prefix) + ".gate";

  Tensor logits = run_linear(s, h, w.router, DType::kF32);  // routing in f32, as transformers
  Tensor experts = be.empty(DType::kI32, {t, k});
  Tensor weights = be.empty(DType::kF32, {t, k});
  be.route(logits, w.correction_bias, router_, experts, weights);
  if (s.taps) {
    tap(s, gate + ".logits", logits);
    tap(s, gate + ".experts", experts);
    tap(s, gate + ".weights", weights);
  }

  // The shared experts first (their gate, if any, applies to their output only), then the
  // routed experts accumulated onto them: y = shared + Σ routed, no separate add pass over
  // [T, hidden] (nor a zero fill). Without shared experts y = Σ routed.
  Tensor y;
  if (w.shared)
    y = shared_experts(s, w, h);
  else
    y = be.empty(be.activation_dtype(), {t, hidden});
  const bool accumulate = w.shared.has_value();

  bool expert_taps = false;
  if (s.taps)
    for (const auto& e : w.experts)
      expert_taps = expert_taps || s.taps->wants(module_name(e.gate.name) + ".input") ||
                    s.taps->wants(module_name(e.down.name) + ".input");
  if (!expert_taps) {
    be.moe_experts(h, experts, weights, w.experts, y, accumulate);
    return y;
  }

  // Same computation expert by expert through run_linear, so that every expert linear's input
  // (only the tokens routed to it) reaches the observer; scatter-added onto y in expert order, as
  // moe_experts does (on the CPU: the same result bit for bit).
  const Tensor host_e = be.download(experts), host_w = be.download(weights);
  const int32_t* pe = host_e.data<int32_t>();
  const float* pw = host_w.data<float>();
  if (!accumulate) be.fill_zero(y);
  for (std::size_t e = 0; e < w.experts.size(); ++e) {
    std::vector<int32_t> rows;
    std::vector<float> scale;
    for (int64_t i = 0; i < t * k; ++i)
      if (pe[i] == static_cast<int32_t>(e)) {
        rows.push_back(static_cast<int32_t>(i / k));
        scale.push_back(pw[i]);
      }
    if (rows.empty()) continue;
    const int64_t n = static_cast<int64_t>(rows.size());
    Tensor idx = be.upload(Tensor::copy_of(DType::kI32, {n}, rows.data()));
    Tensor xe = be.empty(be.activation_dtype(), {n, hidden});
    be.gather_rows(h, idx, xe);
    const MlpWeights ew{w.experts[e].gate, w.experts[e].up, w.experts[e].down};
    Tensor out = mlp(s, ew, xe);
    be.scatter_add_rows(out, idx, be.upload(Tensor::copy_of(DType::kF32, {n}, scale.data())), y);
  }
  return y;
}

}  // namespace refinery::model
