#pragma once
// Every tensor the forward needs, by Hugging Face name, as zero-copy views of the checkpoint
// (memory-mapped safetensors). Linear weights become backend::LinearWeight (dense, or FP8 block
// paired with its `weight_scale_inv`); fused expert tensors (transformers 5 `experts.gate_up_proj`
// [E, 2I, H] / `experts.down_proj` [E, H, I]) are sliced into per-expert views. A missing or
// mis-shaped tensor is a user error naming the tensor, the expected and the found shape.

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/model/model_config.hpp"

namespace refinery::model {

using backend::ExpertWeights;
using backend::LinearWeight;

struct AttentionWeights {
  // GQA / MHA
  LinearWeight q_proj, k_proj, v_proj;  // q_proj is also MLA's query without LoRA
  Tensor q_norm, k_norm;                // qwen3 [head_dim], or undefined
  // MLA
  LinearWeight q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj;
  Tensor q_a_layernorm, kv_a_layernorm;
  LinearWeight o_proj;
};

struct MlpWeights {
  LinearWeight gate_proj, up_proj, down_proj;
};

struct MoeWeights {
  LinearWeight router;     // [E, hidden], `gate.weight`
  Tensor correction_bias;  // [E] `gate.e_score_correction_bias`, or undefined
  std::vector<ExpertWeights> experts;
  std::optional<MlpWeights> shared;  // shared expert(s), one SwiGLU
  LinearWeight shared_gate;          // qwen2_moe [1, hidden], or undefined
};

struct LayerWeights {
  Tensor input_layernorm, post_attention_layernorm;  // [hidden]
  AttentionWeights attention;
  std::optional<MlpWeights> mlp;  // dense layers
  std::optional<MoeWeights> moe;  // MoE layers
  std::string mlp_prefix;         // "model.layers.N.mlp" or "...block_sparse_moe"
};

struct ModelWeights {
  Tensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  Tensor norm;           // [hidden]
  LinearWeight lm_head;  // [vocab, hidden]; the embedding when tied

  // Maps the tensors of `checkpoint` for `config`. The views keep the mapping alive.
  static ModelWeights load(const io::Checkpoint& checkpoint, const ModelConfig& config);
  // The same structure over tensors held in memory by HF name (a model being trained: its
  // compute copies, or its gradients, which then come out as views with the same slicing).
  // `source` names the tensors in messages.
  static ModelWeights from_tensors(const std::map<std::string, Tensor>& tensors,
                                   const ModelConfig& config, const std::string& source);
  // (HF name, shape) of every tensor the model uses, in load order: those of `checkpoint` (fused
  // or per-expert, FP8 scales included), or without one those a random initialization creates
  // (per-expert layout, as transformers 4's save_pretrained). A tied lm_head is absent (it is
  // the embedding).
  static std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(
      const ModelConfig& config, const io::Checkpoint* checkpoint = nullptr);
};

}  // namespace refinery::model
