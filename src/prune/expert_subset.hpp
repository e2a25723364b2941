#pragma once
// The exact expert-subset choice (`--expert-metric exact`): for an MoE layer with E routed experts
// and a target of N kept, the subset whose restricted MoE output is closest to the full one.
//
// From a calibration pass we keep, per MoE layer, at most `max_tokens` rows of the MoE block's
// input x (post_attention_layernorm output, [T, hidden]) and the router logits [T, E]. Every
// expert's ungated SwiGLU output f_e(x_t) is computed once (E x T rows, the backend's moe_experts
// with each token sent to e at weight 1). A subset S is then scored without running any expert:
// the router re-selects top-k among S with the model's own rules (the backend's route() on the
// logit columns of S and their correction bias: softmax/sigmoid over S only, group limit,
// norm_topk_prob, routed_scaling_factor), exactly what the pruned model will compute, and
//   error(S) = mean over t and hidden of (sum_j w_S[t,j] f_{e_j}(x_t) - sum_j w[t,j] f_{e_j}(x_t))^2,
// the full routing's output being the second sum. The shared experts do not depend on S and
// cancel. The subset with the lowest error wins (ties: the lexicographically first).
//
// Group-limited routing (n_group > 1 with group_limited_greedy / noaux_tc): only subsets keeping
// N / n_group experts of every group are valid (the kept experts renumbered in order form the
// groups the pruned router uses; plan.hpp). The number of valid subsets must not exceed
// `max_subsets`, else a user error suggests a metric (frequency, gate_norm).

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend/router.hpp"
#include "engine/model/transformer.hpp"
#include "prune/importance.hpp"
#include "prune/plan.hpp"

namespace refinery::prune {

struct ExpertSubsetOptions {
  int experts = 0;              // N: routed experts kept per MoE layer
  int64_t max_tokens = 1024;    // MoE input rows kept per layer (the first ones of the stream)
  int64_t max_subsets = 5000;   // largest number of valid subsets searched per layer
  // seq_len of the calibration windows; its max_tokens is raised/lowered to what max_tokens needs.
  CalibrationOptions calibration;
};

// One MoE layer's calibration sample: everything a subset's error is computed from (host f32).
struct MoeLayerSample {
  int layer = 0;
  backend::RouterSpec router;          // the layer's router over all E experts
  int64_t tokens = 0;                  // T
  int64_t hidden = 0;
  std::vector<float> inputs;           // [T, hidden] the MoE block's input rows (may be empty)
  std::vector<float> logits;           // [T, E] router logits
  std::vector<float> correction_bias;  // [E]; empty when the router has none
  std::vector<float> expert_outputs;   // [E, T, hidden] f_e(x_t), before the gate weight
};

struct LayerSubsetChoice {
  int layer = 0;                 // the layer's index in the model
  std::vector<int> experts;      // the kept experts, ascending (a LayerPlan::experts)
  double error = 0.0;            // error(experts), see above
  double full_mean_square = 0.0; // mean of (full routed output)^2, the scale of `error`
  int64_t subsets = 0;           // valid subsets evaluated
  int64_t tokens = 0;            // calibration rows used
};

// The valid N-subsets of `router`'s experts (ascending index lists, in lexicographic order):
// all C(E, N), or with group-limited routing those with N / n_group per group. User error
// (naming --experts) when N is outside [top_k, E], not a multiple of n_group with groups, or the
// count exceeds `max_subsets` (the message gives the count and suggests --expert-metric
// frequency or gate_norm).
std::vector<std::vector<int>> valid_expert_subsets(const backend::RouterSpec& router, int n,
                                                   int64_t max_subsets);

// error(experts) of `sample` (experts ascending, valid for the router's groups).
double subset_error(const MoeLayerSample& sample, std::span<const int> experts);

// The best of valid_expert_subsets(sample.router, n, max_subsets).
LayerSubsetChoice best_expert_subset(const MoeLayerSample& sample, int n, int64_t max_subsets);

// Runs the calibration pass and builds one sample per MoE layer (in layer order), each with at
// most `max_tokens` rows. Expert outputs run on the model's backend.
std::vector<MoeLayerSample> collect_moe_samples(model::Transformer& model,
                                                std::span<const int32_t> tokens,
                                                const CalibrationOptions& calibration,
                                                int64_t max_tokens);

// check_options (plan.hpp) for `--experts N`, the subset count check for every MoE layer (before
// any calibration), then collect_moe_samples and best_expert_subset per layer, one layer's expert
// outputs in memory at a time.
std::vector<LayerSubsetChoice> choose_expert_subsets(model::Transformer& model,
                                                     std::span<const int32_t> tokens,
                                                     const ExpertSubsetOptions& options);

// Writes each choice's experts into the LayerPlan of the same source layer, for a plan built
// without --experts (build_plan with options.experts unset, or PrunePlan::identity): per-expert
// channel lists for every expert (an --ffn-ratio plan) are narrowed to the kept experts'. A layer
// of the plan that already chooses experts is an internal error; layers not in the plan (dropped
// by --layers) are skipped.
void set_plan_experts(PrunePlan& plan, const std::vector<LayerSubsetChoice>& choices);

}  // namespace refinery::prune
