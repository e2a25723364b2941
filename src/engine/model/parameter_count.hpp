#pragma once
// Parameter counts of a model: (a) expected, from its config alone; (b) tallied from the names
// and shapes of the tensors of a real checkpoint (what `refine inspect` reports).
//
// Conventions (documented for `refine inspect`):
//  - total counts every parameter of the transformers model once: the input embedding is counted
//    (as transformers' num_parameters() does); a tied lm_head is not counted again. DeepSeek's
//    `e_score_correction_bias` (a buffer in transformers, a tensor in the checkpoint) is counted
//    under routers, so total = num_parameters() + its size.
//  - active (per token) = total - routed experts + top_k / n_routed of the routed experts, summed
//    over MoE layers. The embedding is included: a Mixtral token "uses" 12.9B this way, the number
//    Mistral publishes. DeepSeek publishes its 37B without the input embedding; see
//    active_excluding_embedding().
//  - DeepSeek-V3 multi-token-prediction layers (num_nextn_predict_layers) are not part of the
//    transformers model: they are counted in `mtp` and in neither total nor active.
//  - Quantized tensors count logical weights: an AWQ qweight int32 word holds 8 weights
//    (4 and 3 bits, 3-bit codes in 4-bit slots) or 4 (8 bits);
//    FP8 weight_scale_inv, AWQ qzeros and scales are storage metadata and count zero.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model/tensor_role.hpp"

namespace refinery::model {

struct ModelConfig;

struct ParameterCounts {
  int64_t embedding = 0;
  int64_t attention = 0;       // projections and their biases
  int64_t dense_mlp = 0;       // SwiGLU of dense layers
  int64_t routed_experts = 0;  // all routed experts of all MoE layers
  int64_t shared_experts = 0;  // shared experts (+ qwen2_moe's shared_expert_gate)
  int64_t routers = 0;         // router weight [E, hidden] (+ e_score_correction_bias [E])
  int64_t norms = 0;           // every RMSNorm weight, including qwen3 q/k norms and MLA latent norms
  int64_t lm_head = 0;         // 0 when tied to the embedding
  int64_t other = 0;           // unrecognized checkpoint tensors (tally only)
  int64_t mtp = 0;             // DeepSeek-V3 MTP layers: reported, not in total or active
  int64_t routed_experts_active = 0;  // routed_experts * top_k / n_routed

  int64_t total() const;
  int64_t active() const;
  int64_t active_excluding_embedding() const { return active() - embedding; }
};

// Expected counts from the config alone.
ParameterCounts count_parameters(const ModelConfig& config);

// Logical parameters held by one checkpoint tensor of the given shape.
int64_t logical_parameters(const TensorRole& role, const std::vector<int64_t>& shape, const ModelConfig& config);

// Accumulates ParameterCounts over the tensors of a checkpoint. `config` must outlive it.
class CheckpointParameterTally {
 public:
  explicit CheckpointParameterTally(const ModelConfig& config) : config_(&config) {}
  // Classifies and counts one tensor; returns its role.
  TensorRole add(std::string_view name, const std::vector<int64_t>& shape);
  // The counts so far (routed_experts_active derived from the routed total).
  ParameterCounts counts() const;
  // Names that matched no known pattern (counted under `other`).
  const std::vector<std::string>& unrecognized() const { return unrecognized_; }

 private:
  const ModelConfig* config_;
  ParameterCounts counts_;
  std::vector<std::string> unrecognized_;
};

}  // namespace refinery::model
