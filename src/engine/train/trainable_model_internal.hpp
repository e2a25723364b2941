#pragma once
// Types shared by the files of TrainableModel (trainable_model.cpp: the skeleton, LM head and loss;
// trainable_layer.cpp: attention and MLP/MoE blocks, forward with intermediates and backward).
#include <vector>

#include "engine/train/trainable_model.hpp"

namespace refinery::train {

// A new tensor of zeros on `be`'s device.
inline Tensor zeros(backend::Backend& be, DType dtype, std::vector<int64_t> shape) {
  Tensor t = be.empty(dtype, std::move(shape));
  be.fill_zero(t);
  return t;
}

// rms_norm_backward into the residual gradient dx (f32 on CUDA); returns the updated dx in the
// activation dtype as well, the dy of the linear backward that comes next: one fused op on CUDA
// (no separate convert re-reading dx), dx itself where it already has that dtype (the CPU).
inline Tensor norm_backward_to_activation(backend::Backend& be, const Tensor& x,
                                          const Tensor& weight, float eps, const Tensor& dy,
                                          Tensor& dx, Tensor& dweight) {
  if (dx.dtype() == be.activation_dtype()) {
    be.rms_norm_backward(x, weight, eps, dy, dx, dweight);
    return dx;
  }
  Tensor converted = be.empty(be.activation_dtype(), dx.shape());
  be.rms_norm_backward_and_convert(x, weight, eps, dy, dx, dweight, converted);
  return converted;
}

struct TrainableModel::Batch {
  std::span<const int32_t> tokens;  // [T] host ids
  Tensor ids;                       // I32 [T] on the device
  int64_t t = 0;                    // tokens
  int64_t sequences = 0;            // B
  int64_t length = 0;               // L = T / B
};

// One SwiGLU MLP: out = down(s), s = silu(g) * u, g = gate(h), u = up(h); h is its input.
struct MlpActs {
  Tensor h, g, u, s, out;
};

// One routed expert's share of a MoE layer.
struct ExpertActs {
  int expert = 0;
  Tensor rows;               // I32 [n] token rows routed to it (device)
  Tensor scale;              // f32 [n] their routing weights (device)
  std::vector<int32_t> pos;  // [n] flat positions t·k + j in the router's [T, k] outputs
  MlpActs mlp;               // over the gathered rows, h [n, hidden]
};

struct TrainableModel::LayerActs {
  Tensor x_in;   // f32 [T, hidden]: the layer's input
  Tensor h1;     // input_layernorm(x_in), [T, hidden]
  // GQA: projections [T, H|KV, d], after the qwen3 q/k norm (== q0/k0 without it), after RoPE.
  Tensor q0, k0, v, qn, kn, q, k;
  // MLA: q LoRA [T, rq] and its norm; kv_a output [T, r + dr]; latent c [T, r] and its norm;
  // the shared rope key before/after RoPE [T, 1, dr]; kv_b output [T, H·(dn + dv)]; the keys and
  // values attention reads [T, H, dk] / [T, H, dv].
  Tensor qa, qan, ckv, c, cn, kpe0, kpe, kv, keys, values;
  Tensor o;      // attention output [T, H, dv]
  // Per sequence s of the micro-batch: attention's row log-sum-exp f32 [H, len] (undefined where
  // the backend does not keep it; Backend::attention_with_lse), reused by its backward.
  std::vector<Tensor> lse;
  Tensor x_mid;  // f32 [T, hidden]: after the attention residual
  Tensor h2;     // post_attention_layernorm(x_mid)
  // Dense layers.
  MlpActs mlp;
  // MoE layers.
  Tensor router_logits;  // f32 [T, E]
  Tensor experts;        // I32 [T, k] (device)
  Tensor weights;        // f32 [T, k] (device)
  std::vector<ExpertActs> routed;
  MlpActs shared;
  Tensor shared_gate;  // [T, 1] gate logit (qwen2_moe), or undefined
};

}  // namespace refinery::train
