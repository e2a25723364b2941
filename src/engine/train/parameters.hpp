#pragma once
// The parameters of a model being trained (DESIGN §4: bf16 compute, fp32 master weights).
//
// One Parameter per Hugging Face tensor name, all on the training backend's device:
//   master   f32 [shape]   the weights AdamW updates
//   compute  the forward's copy in the backend's activation dtype (bf16 on CUDA, refreshed by
//            every optimizer step); on an f32 backend it IS the master tensor (no copy)
//   grad     f32 [shape]   accumulated by the backward ops, zeroed by zero_grad()
// Optimizer moments live in the optimizer (optimizer.hpp).
//
// A student comes from a HF model directory (any float dtype, converted to f32; FP8 and AWQ
// checkpoints are refused) or from a config.json with a seeded random initialization that follows
// transformers' _init_weights for these families: every linear weight and the embedding ~
// N(0, initializer_range), RMSNorm weights 1, biases and the score-correction bias 0.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend/backend.hpp"
#include "engine/core/tensor.hpp"
#include "engine/model/model_config.hpp"

namespace refinery::train {

struct Parameter {
  std::string name;  // HF name, e.g. "model.layers.0.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  Tensor master;   // f32, on the device
  Tensor compute;  // activation dtype (== master on an f32 backend)
  Tensor grad;     // f32, on the device
  // Trained by the optimizer. DeepSeek-V3's e_score_correction_bias is a buffer in transformers
  // (set by load balancing, not by gradients): not trainable.
  bool trainable = true;
  // AdamW weight decay applies to matrices (linear weights, embeddings), not to 1-D parameters
  // (norm weights, biases), the usual split (and the fixtures' torch param groups).
  bool decay = true;
  int64_t numel() const;
};

class ParameterSet {
 public:
  // The weights of a HF model directory (config.json + safetensors).
  static ParameterSet load(const std::filesystem::path& model_dir, const model::ModelConfig& config,
                           backend::Backend& backend);
  // Random initialization of every tensor `config` needs, from `seed` (each parameter's draws
  // depend only on the seed and its name, so adding a layer does not change the others).
  static ParameterSet random_init(const model::ModelConfig& config, double initializer_range,
                                  uint64_t seed, backend::Backend& backend);

  std::vector<Parameter>& params() { return params_; }
  const std::vector<Parameter>& params() const { return params_; }
  Parameter* find(const std::string& name);
  int64_t total_numel() const;

  // name -> compute tensor / name -> gradient tensor (for model::ModelWeights::from_tensors).
  std::map<std::string, Tensor> compute_map() const;
  std::map<std::string, Tensor> grad_map() const;

  void zero_grad(backend::Backend& backend);

  // Deferred zeroing, for a training step (saves a fill and a re-read of the linear weights'
  // gradients, ~4 ms per step of the 1.4B student on an H100). Protocol:
  //   defer_zero_grad   instead of zero_grad before a step's first forward_backward: gradients
  //                     that an overwriting op claimed in an earlier step are only marked
  //                     pending (not touched); every other gradient is zeroed as by zero_grad;
  //   claim_grad(g)     by the op about to write g (a whole parameter gradient): kOverwrite if g
  //                     is pending (no longer pending after this), else kAdd; remembers g as
  //                     claimable, so the next defer_zero_grad defers it;
  //   finish_pending    zeroes what is still pending (a gradient no op wrote this time, e.g. an
  //                     expert no token reached). TrainableModel::forward_backward calls it
  //                     before returning, so its callers see the gradients zero_grad would give.
  void defer_zero_grad(backend::Backend& backend);
  backend::GradWrite claim_grad(const Tensor& grad);
  void finish_pending(backend::Backend& backend);
  // Copies master into compute (after loading master weights from a training checkpoint).
  void refresh_compute(backend::Backend& backend);

  // Writes `dir`/model.safetensors (or shards) with every parameter in `dtype` (f32 or bf16), in
  // registration order. `dir` must exist.
  void save_weights(const std::filesystem::path& dir, DType dtype, backend::Backend& backend) const;

 private:
  void add(std::string name, std::vector<int64_t> shape, const std::vector<float>& values,
           backend::Backend& backend);
  std::vector<Parameter> params_;
  // Deferred zeroing (per parameter, in params_ order): claimable_ once claim_grad saw it,
  // pending_ between defer_zero_grad and its first claim.
  std::vector<bool> claimable_, pending_;
};

}  // namespace refinery::train
