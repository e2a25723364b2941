#pragma once
// MoE -> dense initialization (`refine prune --to-dense`): a dense student whose every FFN is the
// layer's shared experts plus its k most important routed experts concatenated into one wider
// SwiGLU, each routed expert's down_proj columns scaled by its gate weight statistic so that the
// dense FFN approximates the MoE output:
//   dense(x) = s_shared * shared(x) + sum_{e in chosen} c_e * f_e(x)
// where f_e is expert e's SwiGLU; since SwiGLU is separable by channel, concatenating the gate/up
// rows of the pieces and the scaled down columns computes exactly that sum.
//
//   c_e   GateScale::kRoutedMean (default): the mean gate weight of e over the calibration tokens
//         routed to e (the weight the router applies, after norm_topk_prob and
//         routed_scaling_factor), 0 for an expert no token reached;
//         GateScale::kExpected: the gate weight summed over the tokens routed to e, divided by
//         all calibration tokens (frequency x routed mean): with k = all experts the dense FFN is
//         then the MoE output's expectation under independence of routing and expert output.
//   s_shared  1, or for qwen2_moe's sigmoid-gated shared expert the mean of
//         sigmoid(shared_expert_gate . x) over the calibration tokens.
//
// The target family (one that transformers loads, with the parent's attention unchanged):
//   deepseek_v2 / deepseek_v3 -> the same model_type with every layer dense:
//       first_k_dense_replace = num_hidden_layers (MLA kept; the MoE keys stay, unused);
//       num_nextn_predict_layers = 0 (MTP layers are not carried over).
//   mixtral   -> mistral   (same GQA attention, sliding_window, RoPE)
//   qwen2_moe -> qwen2     (qwen2 always has q/k/v biases: zeros are written when the parent has none)
//   qwen3_moe -> qwen3     (q/k norm, attention_bias kept)
// HF configs hold one intermediate_size: layers narrower than the widest FFN (the parent's dense
// layers, or the merged ones) are padded with zero channels (gate, up and down all 0: silu(0)*0 =
// 0, the output is unchanged). Channel order of a merged layer: shared, then the chosen experts
// ascending, then padding.
//
// Not supported (user errors): dense parents, quantized parents (FP8 blocks, AWQ; dequantize
// first), mlp_bias.

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/model/model_config.hpp"
#include "engine/model/transformer.hpp"
#include "prune/importance.hpp"
#include "prune/plan.hpp"

namespace refinery::prune {

// Gate-weight statistics of a calibration pass, per layer (dense layers: empty vectors).
struct RoutingStats {
  struct Layer {
    std::vector<int64_t> routed;    // [E] tokens routed to each expert
    std::vector<double> gate_sum;   // [E] sum of the gate weights those tokens gave it
    double shared_gate_sum = 0.0;   // qwen2_moe: sum over tokens of sigmoid(shared_expert_gate . x)
  };
  int64_t tokens = 0;
  std::vector<Layer> layers;  // [num_layers]

  nlohmann::json to_json() const;
};

// One calibration pass (calibration_pass.hpp) collecting RoutingStats through the router taps.
RoutingStats compute_routing_stats(model::Transformer& model, std::span<const int32_t> tokens,
                                   const CalibrationOptions& options);

enum class GateScale { kRoutedMean, kExpected };
// "routed_mean" | "expected"; user error otherwise.
GateScale parse_gate_scale(const std::string& name);
const char* gate_scale_name(GateScale scale);

struct ToDenseOptions {
  int routed_experts_per_layer = 0;  // k; 0 keeps only the shared experts (needs some)
  ExpertMetric metric = ExpertMetric::kFrequency;  // kFrequency or kGateNorm (the report's scores)
  GateScale gate_scale = GateScale::kRoutedMean;
  bool force = false;                // replace an existing non-empty output directory
  nlohmann::json provenance;         // refinery.json; "pass": "to_dense" and "parent" filled if absent
};

// Per layer of the parent: the chosen experts (ascending; empty for dense layers) and their c_e.
struct DenseLayerSource {
  bool moe = false;
  std::vector<int> experts;
  std::vector<double> scales;   // c_e, in `experts` order
  double shared_scale = 1.0;
  int width = 0;                // FFN channels before padding
};

struct ToDenseResult {
  std::string model_type;       // of the written model
  int intermediate_size = 0;
  std::vector<DenseLayerSource> layers;
  int64_t parameters_before = 0;
  int64_t parameters_after = 0;
  nlohmann::json config;        // the written config.json
};

// The k best experts of every MoE layer by the metric (ties: lower index), with their scales.
// User errors: a dense or quantized parent, mlp_bias, k outside [0, E] (0 without shared
// experts), metric random, a report whose layers or experts do not match the model.
std::vector<DenseLayerSource> choose_dense_sources(const model::ModelConfig& config,
                                                   const ImportanceReport& report,
                                                   const RoutingStats& stats,
                                                   const ToDenseOptions& options);

// The dense model's config.json from the parent's (see the table above).
nlohmann::json dense_config(const nlohmann::json& parent, const model::ModelConfig& config,
                            int intermediate_size);

// Writes the dense model into `out_dir` (temporary directory renamed at the end: `out_dir` is
// either untouched or complete): weights in the parent's dtypes, config.json, the parent's
// tokenizer and other small files, refinery.json.
ToDenseResult write_dense_from_moe(const std::filesystem::path& moe_dir, const ImportanceReport& report,
                                   const RoutingStats& stats, const ToDenseOptions& options,
                                   const std::filesystem::path& out_dir);

}  // namespace refinery::prune
