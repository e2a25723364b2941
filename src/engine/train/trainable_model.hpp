#pragma once
// A transformer being trained: the forward of model::Transformer (same families, same math: f32
// residual stream, activations in the backend's dtype) written once more with every intermediate
// kept, and its backward, over the Backend's forward and backward ops (DESIGN §4, "training").
//
// One micro-batch = `sequences` windows of equal length L, concatenated in `tokens` [B·L]: each
// window is an independent sequence starting at position 0. Position t of a window is scored on
// the next token (label = window[t + 1]); the last position of every window has no label and does
// not count (no CE, no KD term), as in tests/fixtures/train/README.md.
//
// Memory: with `recompute` (activation recomputation, the default) the forward keeps only each
// layer's input x_l (f32 [T, hidden]); the backward recomputes the layer's intermediates from it,
// one layer at a time (about one extra forward of compute). Without it every layer's
// intermediates are kept from the forward.
// The loss never holds [T, vocab]: the LM head, the loss and its gradient run over chunks of rows.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend/backend.hpp"
#include "engine/model/model_config.hpp"
#include "engine/model/model_weights.hpp"
#include "engine/model/transformer.hpp"
#include "engine/train/parameters.hpp"

namespace refinery::train {

// What the student learns from, for the rows of one micro-batch (all optional: CE alone needs
// none of them).
struct TeacherTargets {
  // Online: the teacher model and its final-normed hidden states of the same tokens [T, hidden_t]
  // (Transformer::forward_hidden_batch); its logits are made one chunk of rows at a time.
  model::Transformer* teacher = nullptr;
  Tensor teacher_hidden;
  // Offline: the top-k cache rows of these tokens, ids I32 [T, k] and log-probs f32 [T, k].
  Tensor top_k_ids;
  Tensor top_k_log_probs;
  // Optional, with the top-k rows: a prior f32 [vocab] (normalized log-distribution) over which
  // the teacher's tail mass is spread; each loss chunk's teacher is then made dense
  // (Backend::expand_top_k) and the dense loss is used instead of the tail bucket.
  Tensor tail_log_prior;
};

// Sums over the counted positions of one or more micro-batches.
struct LossSums {
  double kd = 0.0;        // Σ D (no T² factor)
  double ce = 0.0;        // Σ -log q(label) at temperature 1
  int64_t positions = 0;  // counted positions
  LossSums& operator+=(const LossSums& o) {
    kd += o.kd;
    ce += o.ce;
    positions += o.positions;
    return *this;
  }
};

struct TrainableModelOptions {
  bool recompute = true;           // activation recomputation (see above)
  int64_t loss_chunk_rows = 0;     // rows per LM-head/loss chunk; 0: even chunks of <= 1 GiB of f32 logits
};

class TrainableModel {
 public:
  TrainableModel(model::ModelConfig config, ParameterSet params,
                 std::shared_ptr<backend::Backend> backend, TrainableModelOptions options = {});

  // Counted positions of a micro-batch: sequences · (L - 1).
  static int64_t counted_positions(int64_t tokens, int64_t sequences);

  // Forward, loss and backward of one micro-batch. Adds grad_scale · ∂(kd_weight·T²·Σ D +
  // ce_weight·Σ CE)/∂θ to every parameter's gradient (callers zero them per optimizer step and
  // pass grad_scale = 1 / counted positions of the whole step). Returns the sums.
  LossSums forward_backward(std::span<const int32_t> tokens, int64_t sequences,
                            const TeacherTargets& teacher, const backend::KdLossOptions& loss,
                            double grad_scale);
  // Forward and loss only (held-out evaluation).
  LossSums evaluate(std::span<const int32_t> tokens, int64_t sequences,
                    const TeacherTargets& teacher, const backend::KdLossOptions& loss);

  // DeepSeek-V3's auxiliary-loss-free load balancing: every MoE layer with a score-correction
  // bias moves each expert's bias by `rate` toward balance, b_e += rate · sign(mean load − load_e),
  // with the loads (tokens routed to each expert) counted by the forward_backward calls since the
  // last update (recomputation does not count twice). Returns the largest relative imbalance
  // max_e load_e / mean load seen (1 = balanced; 0 when nothing was routed).
  double update_correction_bias(double rate);

  const model::ModelConfig& config() const { return config_; }
  ParameterSet& parameters() { return params_; }
  backend::Backend& backend() { return *backend_; }

 private:
  struct Batch;        // tokens, positions, segments of the current micro-batch
  struct LayerActs;    // one layer's intermediates (trainable_layer.cpp)

  LossSums run(std::span<const int32_t> tokens, int64_t sequences, const TeacherTargets& teacher,
               const backend::KdLossOptions& loss, double grad_scale, bool backward);
  // x (f32 [T, hidden]) -> x after layer `l` (x is rebound to a new tensor; the input tensor
  // itself is kept unchanged as acts.x_in); keeps the intermediates in `acts`.
  void layer_forward(const Batch& b, int l, Tensor& x, LayerActs& acts);
  // dx: in the gradient w.r.t. the layer's output, out w.r.t. its input (f32 [T, hidden]).
  // dx_act: the same in the activation dtype, in (undefined: converted here) and out.
  void layer_backward(const Batch& b, int l, LayerActs& acts, Tensor& dx, Tensor& dx_act);
  // Final norm, LM head and loss over row chunks; with `backward`, dx (f32 [T, hidden]) receives
  // the gradient w.r.t. the last layer's output, and dx_act the same in the activation dtype.
  LossSums head_and_loss(const Batch& b, const Tensor& x, const TeacherTargets& teacher,
                         const backend::KdLossOptions& loss, double grad_scale, bool backward,
                         Tensor& dx, Tensor& dx_act);
  void rebuild_views();

  model::ModelConfig config_;
  ParameterSet params_;
  std::shared_ptr<backend::Backend> backend_;
  TrainableModelOptions options_;
  model::ModelWeights weights_;  // views of the compute copies
  model::ModelWeights grads_;    // the same structure over the f32 gradients
  // RoPE tables for the current micro-batch shape: row i of the T rows holds position
  // i mod rope_window_length_ (every window starts at position 0).
  backend::RopeTable rope_;
  int64_t rope_window_length_ = 0;
  backend::RouterSpec router_;
  std::vector<std::vector<int64_t>> expert_load_;  // [layer][expert] since the last bias update
  bool counting_load_ = false;                      // set during the first forward of a batch
};

}  // namespace refinery::train
