// Transformer: loading, the layer skeleton (FAMILY_NOTES §1), taps and the lm_head.
#include "engine/model/transformer.hpp"

#include <algorithm>

#include "engine/core/log.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/model/transformer_step.hpp"

namespace refinery::model {

namespace {

// "model.layers.3.self_attn.q_proj" -> "layers.3.self_attn.q_proj".
std::string module_name(const std::string& hf_prefix) {
  return hf_prefix.rfind("model.", 0) == 0 ? hf_prefix.substr(6) : hf_prefix;
}

}  // namespace

backend::RouterSpec router_spec(const ModelConfig& c) {
  backend::RouterSpec r;
  if (!c.moe) return r;
  const MoeConfig& m = *c.moe;
  r.num_experts = m.num_experts;
  r.top_k = m.experts_per_token;
  r.scoring = m.scoring == RouterScoring::kSigmoid ? backend::RouterScoring::kSigmoid
                                                   : backend::RouterScoring::kSoftmax;
  r.grouping = m.topk_method == TopkMethod::kGroupLimitedGreedy ? backend::RouterGrouping::kGroupMax
               : m.topk_method == TopkMethod::kNoauxTc ? backend::RouterGrouping::kGroupTop2
                                                       : backend::RouterGrouping::kNone;
  r.n_group = m.n_group;
  r.topk_group = m.topk_group;
  r.norm_topk_prob = m.norm_topk_prob;
  r.routed_scaling_factor = m.routed_scaling_factor;
  return r;
}

Transformer::Transformer(ModelConfig config, ModelWeights weights,
                         std::shared_ptr<backend::Backend> backend)
    : config_(std::move(config)),
      weights_(std::move(weights)),
      backend_(std::move(backend)),
      router_(router_spec(config_)) {
  ensure_rope(std::min<int64_t>(std::max(config_.max_position_embeddings, 1), 4096));
}

std::unique_ptr<Transformer> Transformer::load(const std::filesystem::path& model_dir,
                                               std::shared_ptr<backend::Backend> backend) {
  ModelConfig config = load_model_config(model_dir);
  const io::Checkpoint checkpoint = io::Checkpoint::open(model_dir);
  ModelWeights weights = ModelWeights::load(checkpoint, config);
  return std::make_unique<Transformer>(std::move(config), std::move(weights), std::move(backend));
}

void Transformer::ensure_rope(int64_t positions) {
  if (positions <= rope_.positions()) return;
  const int64_t n = std::max(positions, rope_.positions() * 2);
  backend::RopeTable host = backend::make_rope_table(config_.rope, n);
  host.cos = backend_->upload(host.cos);
  host.sin = backend_->upload(host.sin);
  rope_ = std::move(host);
}

void Transformer::tap(Step& s, const std::string& name, const Tensor& value) {
  if (s.taps != nullptr && s.taps->wants(name)) s.taps->observe(name, value);
}

Tensor Transformer::run_linear(Step& s, const Tensor& x, const LinearWeight& w,
                               std::optional<DType> out_dtype) {
  if (s.taps != nullptr) tap(s, module_name(w.name) + ".input", x);
  Tensor y = backend_->empty(out_dtype.value_or(backend_->activation_dtype()),
                             {x.size(0), w.out_features()});
  backend_->linear(x, w, y);
  return y;
}

Tensor Transformer::forward_hidden(std::span<const int32_t> tokens, KvCache& cache,
                                   TapObserver* taps) {
  Step s{&cache, cache.length(), static_cast<int64_t>(tokens.size()), taps};
  return run_layers(s, tokens);
}

Tensor Transformer::forward_hidden_batch(std::span<const int32_t> tokens, int64_t sequences,
                                         KvCache& cache, TapObserver* taps) {
  const int64_t t_count = static_cast<int64_t>(tokens.size());
  REFINERY_CHECK(sequences > 0 && t_count % sequences == 0, "forward_hidden_batch: ", t_count,
                 " tokens are not ", sequences, " sequences of one length");
  REFINERY_CHECK(cache.length() == 0, "forward_hidden_batch needs an empty cache");
  Step s{&cache, 0, t_count, taps, sequences};
  return run_layers(s, tokens);
}

void Transformer::prepare_positions(const Step& s) {
  ensure_rope(s.first_position + s.segment_length());
  if (config_.sliding_window && s.first_position + s.segment_length() > *config_.sliding_window &&
      !warned_window_) {
    warned_window_ = true;  // attention here is full; transformers would restrict it to the window
    log::warn(config_.source, ": sliding_window ", *config_.sliding_window,
              " is not implemented; positions beyond it "
              "attend to the full context, so logits there differ from transformers");
  }
}

Tensor Transformer::run_layer(Step& s, int l, Tensor& x, Tensor& h) {
  const LayerWeights& lw = weights_.layers[static_cast<std::size_t>(l)];
  if (s.taps) tap(s, "layers." + std::to_string(l) + ".input", x);
  Tensor a = config_.attention.kind == AttentionKind::kMla ? attention_mla(s, l, h)
                                                           : attention_gqa(s, l, h);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  backend_->add_rms_norm(x, a, lw.post_attention_layernorm, eps, h);
  return lw.moe ? moe(s, l, h) : mlp(s, *lw.mlp, h);
}

void Transformer::finish_layer(Step& s, int l, Tensor& x, const Tensor& m, const Tensor* next_norm,
                               Tensor& h) {
  if (next_norm != nullptr)
    backend_->add_rms_norm(x, m, *next_norm, static_cast<float>(config_.rms_norm_eps), h);
  else
    backend_->add(x, m, x);
  if (s.taps) tap(s, "layers." + std::to_string(l) + ".output", x);
}

Tensor Transformer::run_layers(Step& s, std::span<const int32_t> tokens) {
  KvCache& cache = *s.cache;
  const int64_t t_count = s.tokens;
  const int64_t hidden = config_.hidden_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  prepare_positions(s);
  cache.reserve_more(t_count);

  Tensor ids = backend_->upload(Tensor::copy_of(DType::kI32, {t_count}, tokens.data()));
  // The residual stream x stays f32 on every backend (bf16 would round every layer's sum); the
  // normed input of each block, h, has the activation dtype. Each layer's last residual add is
  // fused with the norm after it (the next layer's input_layernorm, or the final norm).
  const DType act = backend_->activation_dtype();
  Tensor x = backend_->empty(DType::kF32, {t_count, hidden});
  backend_->embedding(ids, weights_.embed_tokens, x);
  Tensor h = backend_->empty(act, {t_count, hidden});
  const int layers = config_.num_layers;
  backend_->rms_norm(x, layers > 0 ? weights_.layers[0].input_layernorm : weights_.norm, eps, h);
  for (int l = 0; l < layers; ++l) {
    const Tensor m = run_layer(s, l, x, h);
    const auto next = static_cast<std::size_t>(l) + 1;
    finish_layer(s, l, x, m,
                 next < weights_.layers.size() ? &weights_.layers[next].input_layernorm
                                               : &weights_.norm,
                 h);
  }
  cache.advance(t_count);
  if (s.taps) tap(s, "norm.output", h);
  return h;
}

Transformer::Step Transformer::calibration_step(int layer, const Tensor& rows, int64_t sequences,
                                                KvCache* cache, TapObserver* taps) {
  REFINERY_CHECK(layer >= 0 && layer < config_.num_layers, "layer ", layer, " of ",
                 config_.num_layers);
  REFINERY_CHECK(rows.ndim() == 2 && rows.size(1) == config_.hidden_size && sequences > 0 &&
                     rows.size(0) % sequences == 0,
                 "calibration rows ", rows.describe(), " are not ", sequences,
                 " sequences of one length");
  REFINERY_CHECK(cache == nullptr || cache->length() == 0, "calibration needs an empty cache");
  Step s{cache, 0, rows.size(0), taps, sequences};
  if (cache != nullptr) {
    prepare_positions(s);
    cache->reserve_more(s.tokens);
  }
  return s;
}

Tensor Transformer::layer_forward(int layer, const Tensor& x, int64_t sequences, KvCache& cache,
                                  TapObserver* taps) {
  Step s = calibration_step(layer, x, sequences, &cache, taps);
  Tensor out = backend_->empty(DType::kF32, x.shape());
  out.copy_from(x);
  Tensor h = backend_->empty(backend_->activation_dtype(), x.shape());
  backend_->rms_norm(out, weights_.layers[static_cast<std::size_t>(layer)].input_layernorm,
                     static_cast<float>(config_.rms_norm_eps), h);
  const Tensor m = run_layer(s, layer, out, h);
  finish_layer(s, layer, out, m, nullptr, h);  // a plain add: no norm follows here
  return out;
}

Tensor Transformer::attention_block(int layer, const Tensor& h, int64_t sequences, KvCache& cache,
                                    TapObserver* taps) {
  Step s = calibration_step(layer, h, sequences, &cache, taps);
  return config_.attention.kind == AttentionKind::kMla ? attention_mla(s, layer, h)
                                                       : attention_gqa(s, layer, h);
}

Tensor Transformer::mlp_block(int layer, const Tensor& h, TapObserver* taps) {
  Step s = calibration_step(layer, h, 1, nullptr, taps);
  const LayerWeights& lw = weights_.layers[static_cast<std::size_t>(layer)];
  return lw.moe ? moe(s, layer, h) : mlp(s, *lw.mlp, h);
}

Tensor Transformer::logits(const Tensor& hidden, TapObserver* taps) {
  Step s{nullptr, 0, hidden.size(0), taps};
  return run_linear(s, hidden, weights_.lm_head, DType::kF32);
}

void Transformer::top_k(const Tensor& hidden, int64_t k, Tensor& indices, Tensor& log_probs,
                        const backend::TopKSampling& sampling) {
  backend_->log_softmax_top_k(hidden, weights_.lm_head, k, sampling, indices, log_probs);
}

Tensor Transformer::forward(std::span<const int32_t> tokens, KvCache* cache, TapObserver* taps) {
  if (cache == nullptr) {
    KvCache local = make_cache(static_cast<int64_t>(tokens.size()));
    return logits(forward_hidden(tokens, local, taps), taps);
  }
  return logits(forward_hidden(tokens, *cache, taps), taps);
}

}  // namespace refinery::model
