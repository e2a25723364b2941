#pragma once
// The decoder-only transformer forward, written once over backend::Backend for all nine families
// (FAMILY_NOTES.md): embedding -> [RMSNorm -> attention (GQA or MLA) -> residual -> RMSNorm ->
// dense SwiGLU or MoE -> residual] x layers -> RMSNorm -> lm_head.
// One Transformer runs one forward at a time (the RoPE table grows on demand); not thread-safe.

#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "engine/backend/backend.hpp"
#include "engine/model/kv_cache.hpp"
#include "engine/model/model_config.hpp"
#include "engine/model/model_weights.hpp"
#include "engine/model/taps.hpp"

namespace refinery::model {

// The router of `config`'s MoE layers as the backends take it (empty for a dense model).
backend::RouterSpec router_spec(const ModelConfig& config);

class Transformer {
 public:
  Transformer(ModelConfig config, ModelWeights weights, std::shared_ptr<backend::Backend> backend);

  // Reads config.json and the safetensors of a HF model directory (weights stay memory-mapped).
  static std::unique_ptr<Transformer> load(const std::filesystem::path& model_dir,
                                           std::shared_ptr<backend::Backend> backend);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  // For passes that rewrite weights in place between calls (AWQ's scale search): replace a
  // LinearWeight's storage or a norm tensor. Tensors given here must live on the backend's device
  // (upload them) so that no per-pointer device cache keeps stale copies.
  ModelWeights& mutable_weights() { return weights_; }
  backend::Backend& backend() { return *backend_; }

  KvCache make_cache(int64_t capacity) { return KvCache(*backend_, config_, capacity); }

  // Runs `tokens` at positions cache.length() ... (appending their keys/values to `cache`) and
  // returns the final-normed hidden states [T, hidden]. Logits come from logits() on row slices.
  Tensor forward_hidden(std::span<const int32_t> tokens, KvCache& cache,
                        TapObserver* taps = nullptr);
  // `sequences` independent sequences of equal length, concatenated in `tokens`, in one forward
  // (larger GEMMs than one sequence at a time; attention stays within each sequence; each starts
  // at position 0). `cache` must be empty and have room for all tokens; afterwards it holds the
  // sequences' keys side by side, which serves no further decoding. For scoring (prefill).
  Tensor forward_hidden_batch(std::span<const int32_t> tokens, int64_t sequences, KvCache& cache,
                              TapObserver* taps = nullptr);
  // ---- calibration (AWQ, pruning): one layer at a time over `sequences` equal-length sequences
  // side by side (each from position 0, attending only to itself), as forward_hidden_batch.
  // `cache` must be empty and have room for all rows; layer `layer`'s slot is overwritten. ----
  // x f32 [T, hidden]: the residual stream into layer `layer`; returns the residual out of it.
  Tensor layer_forward(int layer, const Tensor& x, int64_t sequences, KvCache& cache,
                       TapObserver* taps = nullptr);
  // The attention block alone: h [T, hidden] (activation dtype) is its normed input
  // (input_layernorm(x)); returns the attention output [T, hidden] before the residual add.
  Tensor attention_block(int layer, const Tensor& h, int64_t sequences, KvCache& cache,
                         TapObserver* taps = nullptr);
  // The MLP or MoE block alone: h = post_attention_layernorm(x); output before the residual add.
  Tensor mlp_block(int layer, const Tensor& h, TapObserver* taps = nullptr);

  // lm_head over hidden rows: [R, hidden] -> [R, vocab].
  Tensor logits(const Tensor& hidden, TapObserver* taps = nullptr);
  // The k most likely next tokens per row of `hidden` [T, hidden] and their log-softmax over the
  // whole vocabulary: indices I32 [T, k], log_probs f32 [T, k] on the backend's device, fused with
  // the LM head (Backend::log_softmax_top_k; with sampling.enabled a priority sample instead).
  void top_k(const Tensor& hidden, int64_t k, Tensor& indices, Tensor& log_probs,
             const backend::TopKSampling& sampling = {});
  // Both at once: logits [T, vocab] of `tokens` (a fresh cache when `cache` is null). For tests
  // and short inputs; long inputs use forward_hidden + logits per chunk.
  Tensor forward(std::span<const int32_t> tokens, KvCache* cache = nullptr,
                 TapObserver* taps = nullptr);

 private:
  struct Step;  // per-call context (cache, positions, taps); defined in transformer.cpp

  // y = x · wᵀ, observed by the taps; y in the backend's activation dtype, or in `out_dtype` when
  // given (f32 for router logits and the LM head).
  Tensor run_linear(Step& s, const Tensor& x, const LinearWeight& w,
                    std::optional<DType> out_dtype = std::nullopt);
  Tensor attention_gqa(Step& s, int layer, const Tensor& h);  // transformer_attention.cpp
  Tensor attention_mla(Step& s, int layer, const Tensor& h);
  Tensor mlp(Step& s, const MlpWeights& w, const Tensor& h);  // transformer_mlp.cpp
  Tensor moe(Step& s, int layer, const Tensor& h);
  Tensor shared_experts(Step& s, const MoeWeights& w, const Tensor& h);
  Tensor run_layers(Step& s, std::span<const int32_t> tokens);  // forward_hidden's body
  // Layer `l` on the residual x [T, hidden] f32, given h = input_layernorm(x) [T, hidden]
  // (activation dtype; the caller's norm, fused with the previous layer's last add): attention,
  // its residual add fused with post_attention_layernorm into h (Backend::add_rms_norm), then the
  // MLP or MoE. Returns that block's output [T, hidden], NOT yet added to x: finish_layer adds it.
  Tensor run_layer(Step& s, int l, Tensor& x, Tensor& h);
  // x += m (layer l's last residual add), then the tap layers.l.output. With `next_norm` (the next
  // layer's input_layernorm or the final norm) fused with h = rms_norm(x) * next_norm.
  void finish_layer(Step& s, int l, Tensor& x, const Tensor& m, const Tensor* next_norm,
                    Tensor& h);
  void prepare_positions(const Step& s);  // RoPE table and the sliding-window warning
  // The step of a calibration call on `rows` [T, hidden] (checked), its positions prepared and
  // `cache` (when given) reserved.
  Step calibration_step(int layer, const Tensor& rows, int64_t sequences, KvCache* cache,
                        TapObserver* taps);
  void ensure_rope(int64_t positions);
  void tap(Step& s, const std::string& name, const Tensor& value);

  ModelConfig config_;
  ModelWeights weights_;
  std::shared_ptr<backend::Backend> backend_;
  backend::RopeTable rope_;  // cos/sin for positions [0, rope_.positions()), grown on demand
  backend::RouterSpec router_;
  bool warned_window_ = false;
};

}  // namespace refinery::model
