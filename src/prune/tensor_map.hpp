#pragma once
// How each tensor of the parent checkpoint becomes a tensor of the pruned one (or is dropped), by
// HF name, for every family's naming:
//   model.layers.L.*                     dropped layers vanish, kept ones are renumbered
//   <mlp>.experts.E.<proj>.*             dropped experts vanish, kept ones are renumbered
//                                        (<mlp> = mlp | block_sparse_moe; <proj> = gate_proj,
//                                        up_proj, down_proj | w1, w3, w2)
//   <mlp>.experts.gate_up_proj [E,2I,H], <mlp>.experts.down_proj [E,H,I]   (transformers 5 fused)
//   <mlp>.gate.weight [E,H], <mlp>.gate.e_score_correction_bias [E]        rows of kept experts
//   gate/up projections [I,H] (+ bias [I])   rows of kept channels; down [H,I] columns
//   model.layers.{>= num_hidden_layers}.*    DeepSeek MTP layers: dropped (transformers does not
//                                            build them; their experts would need the same plan)
// Heads (blocks of rows/columns, one block per head):
//   GQA   q_proj rows [heads x head_dim] (+ bias), k_proj / v_proj rows [kv_heads x head_dim]
//         (+ bias), o_proj columns [heads x head_dim]; qwen3's q_norm / k_norm are [head_dim],
//         shared by all heads, so they are copied
//   MLA   q_proj or q_b_proj rows [heads x (qk_nope + qk_rope)], kv_b_proj rows
//         [heads x (qk_nope + v)] (each head's k_nope rows then its v rows), o_proj columns
//         [heads x v_head_dim]; q_a_proj, kv_a_proj_with_mqa and their norms are shared: copied
// Hidden channels (the residual stream):
//   columns of embed_tokens, lm_head, q_proj / q_a_proj / kv_a_proj_with_mqa, k_proj, v_proj,
//   gate/up projections (dense, experts, shared), routers (gate.weight) and shared_expert_gate;
//   rows (and bias) of o_proj and every down projection; input_layernorm,
//   post_attention_layernorm and model.norm. A tensor of unknown role is copied when neither heads
//   nor hidden change, and is a user error when they do (rather than a wrong model).
// Slicing a quantized tensor (FP8 blocks, AWQ) is a user error: dequantize first.

#include <cstdint>
#include <string>
#include <vector>

#include "engine/io/checkpoint.hpp"
#include "engine/model/model_config.hpp"
#include "prune/plan.hpp"

namespace refinery::prune {

// One contiguous part of the output: dimension 0 index `block` of the source (-1: the whole
// source), with per-dimension index lists over that part (empty list: every index).
struct TensorPiece {
  int64_t block = -1;
  std::vector<std::vector<int64_t>> select;
};

struct TensorAction {
  std::string source, target;
  std::vector<int64_t> shape;        // of the target
  std::vector<TensorPiece> pieces;   // concatenated in order along the output's bytes
  bool is_copy() const;              // the bytes are the source's unchanged
};

struct TensorMap {
  std::vector<TensorAction> actions;  // in the checkpoint's name order
  std::vector<std::string> dropped;   // source names with no target
  int dropped_mtp_layers = 0;
};

TensorMap map_tensors(const io::Checkpoint& checkpoint, const model::ModelConfig& config,
                      const PrunePlan& plan);

// Writes the selection of `src` (row-major, `shape`, `elem_bytes` per element) described by
// `piece` into `dst`; returns the bytes written.
std::size_t gather_piece(const std::byte* src, const std::vector<int64_t>& shape,
                         std::size_t elem_bytes, const TensorPiece& piece, std::byte* dst);

}  // namespace refinery::prune
