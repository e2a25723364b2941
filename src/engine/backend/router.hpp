#pragma once
// How an MoE router turns logits into (expert, weight) pairs: the variants of the nine families
// (FAMILY_NOTES §5), independent of the model config so that backends do not depend on it.

namespace refinery::backend {

enum class RouterScoring { kSoftmax, kSigmoid };
enum class RouterGrouping {
  kNone,       // top-k over all experts
  kGroupMax,   // DeepSeek-V2 group_limited_greedy: group score = max score in the group
  kGroupTop2,  // DeepSeek-V3 noaux_tc: group score = sum of the top-2 (score + bias) in the group
};

struct RouterSpec {
  int num_experts = 0;
  int top_k = 0;
  RouterScoring scoring = RouterScoring::kSoftmax;
  RouterGrouping grouping = RouterGrouping::kNone;
  int n_group = 1;     // contiguous groups of num_experts / n_group experts
  int topk_group = 1;  // groups kept
  // Divide the chosen weights by their sum (sigmoid scoring adds 1e-20 to the sum, as DeepSeek-V3).
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;  // applied after normalization
};

}  // namespace refinery::backend
