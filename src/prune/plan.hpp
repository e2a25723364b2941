#pragma once
// A prune plan: what of a model to keep (DESIGN §4 Prune), built from an importance report and
// the user's targets, or read from JSON (a plan can be written, edited and applied later).
//
// Decisions (documented for users in `refine prune --help`):
//   --experts N     keep N routed experts in every MoE layer, the N best by the metric
//                   (frequency, gate_norm, or random from --seed). With group-limited routing
//                   (deepseek n_group > 1 and topk_method group_limited_greedy / noaux_tc) the
//                   best N / n_group of EVERY group are kept, so the kept experts renumbered in
//                   order form n_group groups that are subsets of the old ones and the router
//                   still routes within groups as trained; N must be a multiple of n_group, leave
//                   at least 2 per group for noaux_tc (its group score is a top-2 sum) and
//                   topk_group x N / n_group >= top_k. Otherwise a user error lists the valid N.
//   --layers N      keep the N layers with the highest block score (1 - cos), in their order.
//   --ffn-ratio R   keep round(R x width) channels (at least 1) of every dense MLP and every
//                   routed expert, each its own best by RMS activation at down_proj's input;
//                   shared experts keep the same fraction (deepseek: moe width x n_shared, as its
//                   config ties them). HF configs hold one width per kind, hence one count each.
//   --heads N       keep N attention (query) heads in every layer (HF configs hold one
//                   num_attention_heads). GQA: every kept KV group keeps the same number of query
//                   heads (a config holds one num_key_value_heads and repeats each KV head for
//                   heads / kv_heads consecutive query heads), so N must be a multiple of the kept
//                   KV groups (all of them, or --kv-heads), and each group keeps its own best
//                   N / groups heads by head score. MHA (kv heads == heads, not MLA): a head and its
//                   KV head go together, so N heads keep their N KV heads (any N). MLA (deepseek):
//                   the N best heads, sliced in q_proj / q_b_proj, kv_b_proj and o_proj;
//                   num_key_value_heads follows num_attention_heads.
//   --kv-heads K    GQA only: keep the K best KV groups (kv_group_norm, the sum of their query
//                   heads' scores); the query heads of dropped groups go with them, so
//                   num_attention_heads becomes K x heads-per-group (or --heads N, then each group
//                   keeps N / K). MLA has no KV groups: a user error.
//   --hidden H      keep H embedding channels (the residual stream) by the embedding score:
//                   embed_tokens / lm_head columns, every residual RMSNorm weight, the input
//                   columns of every linear that reads the stream and the output rows of every
//                   linear that writes it. RMSNorm then averages over H channels instead of the
//                   parent's (Minitron accepts this; distillation repairs it).
//   llama and deepseek_v2: transformers 5 refuses a config whose hidden_size is not a multiple of
//                   num_attention_heads, so --heads / --kv-heads / --hidden must keep that true.
//
// In a plan an empty index list means "keep all" of that structure.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/model/model_config.hpp"
#include "prune/importance.hpp"

namespace refinery::prune {

enum class ExpertMetric { kFrequency, kGateNorm, kRandom };

// "frequency" | "gate_norm" | "random"; user error otherwise.
ExpertMetric parse_expert_metric(const std::string& name);
const char* expert_metric_name(ExpertMetric metric);

struct PruneOptions {
  std::optional<int> experts;  // routed experts to keep per MoE layer
  ExpertMetric expert_metric = ExpertMetric::kFrequency;
  uint64_t seed = 0;           // for ExpertMetric::kRandom
  std::optional<int> layers;   // layers to keep
  std::optional<double> ffn_ratio;  // (0, 1]
  std::optional<int> heads;         // query heads to keep per layer
  std::optional<int> kv_heads;      // KV groups to keep per layer (GQA)
  std::optional<int> hidden;        // embedding channels to keep

  // Whether building the plan needs calibration scores (random expert choice alone does not).
  bool needs_scores() const {
    return layers || ffn_ratio || heads || kv_heads || hidden ||
           (experts && expert_metric != ExpertMetric::kRandom);
  }
};

struct LayerPlan {
  int source = 0;                   // the layer's index in the parent model
  std::vector<int> experts;         // kept routed experts, parent indices ascending (MoE layers)
  std::vector<int> mlp_channels;    // kept dense-MLP channels, ascending (dense layers)
  std::vector<int> shared_channels; // kept shared-expert channels, ascending (MoE layers)
  // Per kept expert (in `experts` order, or every expert when `experts` is empty), its kept
  // channels, ascending; empty: all channels of all experts.
  std::vector<std::vector<int>> expert_channels;
  // Kept query heads, ascending; empty: every head of the kept KV groups.
  std::vector<int> heads;
  // Kept KV heads (GQA groups), ascending; empty: all. MLA: always empty (K/V follow `heads`).
  std::vector<int> kv_heads;
};

struct PrunePlan {
  std::vector<LayerPlan> layers;  // the kept layers, in order
  std::vector<int> hidden_channels;  // kept embedding (residual) channels, ascending; empty: all

  // The plan that keeps everything (applying it reproduces the parent).
  static PrunePlan identity(const model::ModelConfig& config);
};

// User errors (naming the option) for targets the model cannot take: --experts on a dense model
// or N outside [top_k, experts] or against the routing groups, --layers outside [1, layers],
// --ffn-ratio outside (0, 1], --heads / --kv-heads / --hidden outside their range or against the
// KV grouping, --kv-heads on MLA. Cheap: run it before a calibration pass.
void check_options(const model::ModelConfig& config, const PruneOptions& options);

// check_options, then the plan. `report` may be null only when !options.needs_scores().
PrunePlan build_plan(const model::ModelConfig& config, const ImportanceReport* report,
                     const PruneOptions& options);

// Checks a plan against the parent's config: indices in range, ascending and unique; the same
// expert count in every MoE layer and the same channel / head count per kind (HF configs hold one
// number each); routing groups kept valid; every kept query head in a kept KV group and every kept
// group with the same number of heads. User errors name the layer and what is wrong.
void validate_plan(const model::ModelConfig& config, const PrunePlan& plan);

// What the scores say about a plan, for refinery.json: every layer's block score and whether it
// was kept; per MoE layer the share of routed tokens that went to the kept experts.
nlohmann::json plan_summary(const ImportanceReport& report, const PrunePlan& plan);

nlohmann::json plan_to_json(const PrunePlan& plan);
PrunePlan plan_from_json(const nlohmann::json& j, const std::string& source);

// The counts a validated plan yields (for the config and messages): -1 when unchanged.
struct PlanShape {
  int layers = 0;
  int experts = -1;          // routed experts per MoE layer
  int mlp_width = -1;        // dense MLP channels
  int expert_width = -1;     // routed expert channels
  int shared_width = -1;     // shared expert channels
  int heads = -1;            // query heads per layer
  int kv_heads = -1;         // KV heads per layer (MLA: == heads)
  int hidden = -1;           // embedding channels
};
PlanShape plan_shape(const model::ModelConfig& config, const PrunePlan& plan);

// The query heads / KV heads a layer keeps, explicit and ascending (every head when unchanged).
// MLA: the KV heads are the query heads.
std::vector<int> kept_heads(const model::ModelConfig& config, const LayerPlan& layer);
std::vector<int> kept_kv_heads(const model::ModelConfig& config, const LayerPlan& layer);

}  // namespace refinery::prune
