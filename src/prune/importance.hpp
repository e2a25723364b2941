#pragma once
// Importance scores of a model's prunable structures from one streamed calibration pass
// (DESIGN §4 Prune): the Transformer forward runs over windows of calibration tokens with a tap
// observer (importance_observer.cpp) that folds every activation it sees into running sums and
// forgets it; nothing of size [all tokens x anything] is kept.
//
// Scores (all means are over the calibration tokens that reach the structure):
//   experts     routing frequency: routed_tokens[e] / tokens (sums to top_k over a layer's
//               experts; routed_tokens sums to top_k x tokens), and the gate-weighted output
//               norm: mean over the tokens routed to e of gate weight x ||expert_e(x)||_2 (0 for
//               an expert never routed). The gate weight is the one the router applies (after
//               norm_topk_prob and routed_scaling_factor).
//   heads       mean L2 norm of each head's slice of o_proj's input [T, heads x v_head_dim];
//               a KV group's score is the sum of its query heads' (GQA), MLA: one group per head.
//   channels    MLP (dense, shared expert, every routed expert): per channel of down_proj's
//               input, mean |a| and sqrt(mean a^2) (RMS).
//   embedding   per hidden channel, the sum over every RMSNorm output (each layer's input norm
//               and post-attention norm, and the final norm) of mean |x| (Minitron).
//   layers      mean over tokens of 1 - cos(layer input, layer output), in [0, 2].

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/model/transformer.hpp"

namespace refinery::prune {

struct ChannelScores {
  std::vector<double> mean_abs;  // [channels]
  std::vector<double> rms;       // [channels]
  bool empty() const { return mean_abs.empty(); }
};

struct ExpertScores {
  std::vector<int64_t> routed_tokens;  // [experts]
  std::vector<double> frequency;       // [experts] routed_tokens / tokens
  std::vector<double> gate_norm;       // [experts]
  std::vector<ChannelScores> channels; // [experts] over the expert's intermediate channels
};

struct LayerImportance {
  int layer = 0;
  bool moe = false;
  double block_score = 0.0;          // mean 1 - cos(input, output)
  std::vector<double> head_norm;     // [num_heads]
  std::vector<double> kv_group_norm; // [num_kv_heads]
  ChannelScores mlp_channels;        // dense layers
  ChannelScores shared_channels;     // MoE layers with a shared expert
  std::optional<ExpertScores> experts;  // MoE layers
};

struct ImportanceReport {
  std::string model;       // the model directory (for people reading the JSON)
  std::string model_type;
  int64_t tokens = 0;      // calibration tokens forwarded
  int64_t windows = 0;
  int64_t seq_len = 0;
  std::vector<double> embedding_channels;  // [hidden]
  std::vector<LayerImportance> layers;     // [num_layers]
};

nlohmann::json report_to_json(const ImportanceReport& report);
// User error naming `source` for a JSON that is not a report.
ImportanceReport report_from_json(const nlohmann::json& j, const std::string& source);

struct CalibrationOptions {
  int64_t seq_len = 512;      // tokens per window (lowered to the stream's length when shorter)
  int64_t max_tokens = 0;     // 0: the whole stream; else at most this many tokens, in whole windows
  // Called after each window with the tokens done so far (progress).
  std::function<void(int64_t done, int64_t total)> on_window;
};

// Runs `model` over non-overlapping windows of `tokens` (each window from position 0, remainder
// dropped, except a stream shorter than one window which is one window) and scores every
// structure. User error for an empty stream or ids outside the vocabulary.
ImportanceReport compute_importance(model::Transformer& model, std::span<const int32_t> tokens,
                                    const CalibrationOptions& options);

}  // namespace refinery::prune
