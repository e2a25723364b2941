#pragma once
// Taps (DESIGN §3): an optional observer of named intermediates of the forward. Calibration (AWQ,
// pruning importance) reads activations through it; the model code has no per-consumer cases: every
// linear is run through one helper that offers its input, every layer offers its input and output,
// every router its logits and choice.
//
// Names (HF module names without the leading "model."):
//   layers.N.input, layers.N.output                   [T, hidden] residual stream into / out of
//   layer N <linear>.input                                    [T, in] the input of that linear,
//   e.g.
//       layers.3.self_attn.q_proj.input, layers.1.mlp.down_proj.input, lm_head.input,
//       layers.1.mlp.gate.input (router), layers.1.mlp.shared_expert_gate.input,
//       layers.1.mlp.experts.5.gate_proj.input        [n_5, hidden] only the tokens routed to
//       expert 5
//   layers.N.mlp.gate.logits                          f32 [T, E] router logits (mixtral:
//   block_sparse_moe.gate.*) layers.N.mlp.gate.experts / .weights              i32 / f32 [T, k]
//   chosen experts and their weights norm.output                                       [T, hidden]
//   after the final norm

#include <string_view>

#include "engine/core/tensor.hpp"

namespace refinery::model {

class TapObserver {
 public:
  virtual ~TapObserver() = default;
  // Whether `name` is wanted; the forward skips delivering (and any extra work for) the others.
  virtual bool wants(std::string_view name) const { return true; }
  // `value` lives on the backend's device and is valid only during the call (copy to keep it).
  virtual void observe(std::string_view name, const Tensor& value) = 0;
};

}  // namespace refinery::model
