// TrainableModel: the micro-batch driver (embedding, layers, recomputation, backward order) and the
// chunked LM head + loss. The layers are in trainable_layer.cpp.
#include <algorithm>

#include "engine/core/error.hpp"
#include "engine/train/trainable_model_internal.hpp"

namespace refinery::train {

namespace {


}  // namespace

TrainableModel::TrainableModel(model::ModelConfig config, ParameterSet params,
                               std::shared_ptr<backend::Backend> backend,
                               TrainableModelOptions options)
    : config_(std::move(config)),
      params_(std::move(params)),
      backend_(std::move(backend)),
      options_(options),
      router_(model::router_spec(config_)) {
  rebuild_views();
}

void TrainableModel::rebuild_views() {
  weights_ = model::ModelWeights::from_tensors(params_.compute_map(), config_, "the student");
  grads_ = model::ModelWeights::from_tensors(params_.grad_map(), config_, "the student gradients");
}

int64_t TrainableModel::counted_positions(int64_t tokens, int64_t sequences) {
  return sequences > 0 ? sequences * (tokens / sequences - 1) : 0;
}

LossSums TrainableModel::forward_backward(std::span<const int32_t> tokens, int64_t sequences,
                                          const TeacherTargets& teacher,
                                          const backend::KdLossOptions& loss, double grad_scale) {
  return run(tokens, sequences, teacher, loss, grad_scale, true);
}

LossSums TrainableModel::evaluate(std::span<const int32_t> tokens, int64_t sequences,
                                  const TeacherTargets& teacher,
                                  const backend::KdLossOptions& loss) {
  return run(tokens, sequences, teacher, loss, 0.0, false);
}

LossSums TrainableModel::run(std::span<const int32_t> tokens, int64_t sequences,
                             const TeacherTargets& teacher, const backend::KdLossOptions& loss,
                             double grad_scale, bool backward) {
  backend::Backend& be = *backend_;
  Batch b;
  b.tokens = tokens;
  b.t = static_cast<int64_t>(tokens.size());
  b.sequences = sequences;
  REFINERY_CHECK(sequences > 0 && b.t % sequences == 0 && b.t / sequences >= 2,
                 "a micro-batch of ", b.t, " tokens is not ", sequences,
                 " windows of >= 2 tokens");
  b.length = b.t / sequences;
  if (b.t != rope_.positions() || b.length != rope_window_length_) {
    // One table row per row of the micro-batch: row i holds position i mod length (RoPE restarts
    // in every window), so one rope call covers all windows (per-window calls were launch bound:
    // 176 launches of ~8 µs per step of the 1.4B student).
    const backend::RopeTable window =
        backend::make_rope_table(config_.rope, std::max<int64_t>(b.length, 16));
    backend::RopeTable tiled = window;
    const int64_t half = window.cos.size(1);
    tiled.cos = Tensor::empty(DType::kF32, {b.t, half});
    tiled.sin = Tensor::empty(DType::kF32, {b.t, half});
    for (int64_t i = 0; i < b.t; ++i) {
      const int64_t p = i % b.length;
      std::copy_n(window.cos.data<float>() + p * half, half, tiled.cos.mutable_data<float>() + i * half);
      std::copy_n(window.sin.data<float>() + p * half, half, tiled.sin.mutable_data<float>() + i * half);
    }
    tiled.cos = be.upload(tiled.cos);
    tiled.sin = be.upload(tiled.sin);
    rope_ = std::move(tiled);
    rope_window_length_ = b.length;
  }
  for (int32_t id : tokens)
    if (id < 0 || id >= config_.vocab_size)
      throw_user_error("token id ", id, " is outside the student's vocabulary [0, ",
                       config_.vocab_size, "): the data was tokenized for another model");
  b.ids = be.upload(Tensor::copy_of(DType::kI32, {b.t}, tokens.data()));

  Tensor x = be.empty(DType::kF32, {b.t, config_.hidden_size});
  be.embedding(b.ids, weights_.embed_tokens, x);
  const auto layers = static_cast<std::size_t>(config_.num_layers);
  std::vector<LayerActs> kept(backward ? layers : 0);
  counting_load_ = backward;
  for (std::size_t l = 0; l < layers; ++l) {
    LayerActs acts;
    layer_forward(b, static_cast<int>(l), x, acts);
    if (!backward) continue;
    if (options_.recompute) {
      kept[l].x_in = acts.x_in;  // only the input survives; the rest is recomputed
    } else {
      kept[l] = std::move(acts);
    }
  }

  counting_load_ = false;
  Tensor dx = backward ? zeros(be, DType::kF32, {b.t, config_.hidden_size}) : Tensor();
  Tensor dx_act;  // dx in the activation dtype, handed from each norm backward to the next linear
  const LossSums sums = head_and_loss(b, x, teacher, loss, grad_scale, backward, dx, dx_act);
  if (!backward) {
    params_.finish_pending(be);
    return sums;
  }

  for (std::size_t l = layers; l-- > 0;) {
    if (options_.recompute) {
      Tensor x_l = be.empty(DType::kF32, kept[l].x_in.shape());
      x_l.copy_from(kept[l].x_in);
      LayerActs acts;
      layer_forward(b, static_cast<int>(l), x_l, acts);
      kept[l] = std::move(acts);
    }
    layer_backward(b, static_cast<int>(l), kept[l], dx, dx_act);
    kept[l] = LayerActs{};  // free this layer's intermediates now
  }
  Tensor d_embed = grads_.embed_tokens;
  be.embedding_backward(b.ids, dx, d_embed);
  params_.finish_pending(be);  // gradients no op claimed this time (deferred zeroing)
  return sums;
}

double TrainableModel::update_correction_bias(double rate) {
  backend::Backend& be = *backend_;
  double worst = 0.0;
  for (std::size_t l = 0; l < expert_load_.size(); ++l) {
    std::vector<int64_t>& load = expert_load_[l];
    if (load.empty()) continue;
    const model::MoeWeights& mw = *weights_.layers[l].moe;
    int64_t total = 0;
    for (int64_t c : load) total += c;
    if (total > 0 && mw.correction_bias.defined() && rate > 0.0) {
      const double mean = static_cast<double>(total) / static_cast<double>(load.size());
      Parameter* p = params_.find(weights_.layers[l].mlp_prefix + ".gate.e_score_correction_bias");
      REFINERY_CHECK(p != nullptr, "correction bias parameter of layer ", l);
      Tensor host = be.download(p->master).clone();
      float* bias = host.mutable_data<float>();
      for (std::size_t e = 0; e < load.size(); ++e) {
        const double c = static_cast<double>(load[e]);
        bias[e] += static_cast<float>(c < mean ? rate : c > mean ? -rate : 0.0);
        worst = std::max(worst, c / mean);
      }
      p->master.copy_from(be.upload(host));
      if (p->compute.data() != p->master.data()) be.convert(p->master, p->compute);
    }
    std::fill(load.begin(), load.end(), 0);
  }
  return worst;
}

LossSums TrainableModel::head_and_loss(const Batch& b, const Tensor& x,
                                       const TeacherTargets& teacher,
                                       const backend::KdLossOptions& loss, double grad_scale,
                                       bool backward, Tensor& dx, Tensor& dx_act) {
  backend::Backend& be = *backend_;
  const DType act = be.activation_dtype();
  const int64_t t = b.t, hidden = config_.hidden_size, vocab = config_.vocab_size;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const bool online = teacher.teacher != nullptr, sparse = teacher.top_k_ids.defined();
  if (loss.kd_weight > 0.0 && !online && !sparse)
    throw_user_error("the loss has a KD term (kd_weight ", loss.kd_weight,
                     ") but no teacher was given: pass a teacher or set the KD weight to 0");
  if (online) {
    REFINERY_CHECK(teacher.teacher_hidden.size(0) == t, "teacher hidden rows");
    if (teacher.teacher->config().vocab_size != vocab)
      throw_user_error("the teacher's vocabulary (", teacher.teacher->config().vocab_size,
                       ") differs from the student's (", vocab,
                       "): distillation needs one tokenizer for both");
  }
  if (sparse)
    REFINERY_CHECK(teacher.top_k_ids.size(0) == t && teacher.top_k_log_probs.size(0) == t,
                   "top-k rows");

  // Labels: the next token inside each window; the last position of a window has none.
  std::vector<int32_t> labels(static_cast<std::size_t>(t));
  for (int64_t i = 0; i < t; ++i)
    labels[static_cast<std::size_t>(i)] =
        (i + 1) % b.length == 0 ? -1 : b.tokens[static_cast<std::size_t>(i + 1)];
  const Tensor label_t = be.upload(Tensor::copy_of(DType::kI32, {t}, labels.data()));

  Tensor h = be.empty(act, {t, hidden});
  be.rms_norm(x, weights_.norm, eps, h);
  Tensor dh = backward ? be.empty(act, {t, hidden}) : Tensor();  // each chunk writes its rows
  // Row chunks of at most 1 GiB of f32 logits, split evenly (8,192 rows of a 102,400 vocabulary:
  // 4 chunks of 2,048). Each chunk's backward reads and writes the whole f32 lm_head gradient
  // [vocab, hidden] once, so fewer, larger chunks save that traffic (13 chunks of 256 MB cost
  // ~5 ms more per step on an H100 for the 1.4B student).
  int64_t chunk = options_.loss_chunk_rows;
  if (chunk <= 0) {
    const int64_t most = std::max<int64_t>(1, (int64_t{1} << 30) / (4 * vocab));
    const int64_t chunks = std::max<int64_t>(1, (t + most - 1) / most);
    chunk = std::max<int64_t>(1, (t + chunks - 1) / chunks);
  }
  // Per-row (D_r, CE_r) for the whole batch, downloaded once after the loop (no sync per chunk).
  Tensor terms = be.empty(DType::kF32, {std::max<int64_t>(t, 1), 2});
  // With bf16 activations the logits' gradient of the whole batch is kept when it fits 2 GiB
  // (8,192 × 102,400: 1.6 GiB) and the LM head's backward runs once after the loop: its weight
  // gradient GEMM (K = all rows) writes the f32 [vocab, hidden] gradient once instead of reading
  // and writing it per chunk (~2 ms per step of the 1.4B student on an H100). The f32 logits stay
  // chunked; no f32 [tokens × vocab] buffer exists.
  const bool whole_backward = backward && act != DType::kF32 &&
                              static_cast<double>(t) * static_cast<double>(vocab) *
                                      static_cast<double>(dtype_bits(act) / 8) <=
                                  static_cast<double>(int64_t{2} << 30);
  Tensor dlogits_all = whole_backward ? be.empty(act, {t, vocab}) : Tensor();
  Tensor lm_head_grad =
      backward ? std::get<backend::DenseWeight>(grads_.lm_head.storage).weight : Tensor();
  LossSums sums;
  for (int64_t r0 = 0; r0 < t; r0 += chunk) {
    const int64_t r1 = std::min(t, r0 + chunk), n = r1 - r0;
    const Tensor h_c = h.slice(r0, r1);
    Tensor logits = be.empty(DType::kF32, {n, vocab});
    be.linear(h_c, weights_.lm_head, logits);
    Tensor teacher_logits, ids, log_probs;
    if (online) {
      // On the student's backend with the teacher's lm_head (what Transformer::logits computes):
      // the teacher's own backend may be busy with the next batch (PrefetchingTeacher).
      teacher_logits = be.empty(DType::kF32, {n, vocab});
      be.linear(teacher.teacher_hidden.slice(r0, r1), teacher.teacher->weights().lm_head,
                teacher_logits);
    }
    if (sparse && teacher.tail_log_prior.defined()) {
      teacher_logits = be.empty(DType::kF32, {n, vocab});
      be.expand_top_k(teacher.top_k_ids.slice(r0, r1), teacher.top_k_log_probs.slice(r0, r1),
                      teacher.tail_log_prior, teacher_logits);
    } else if (sparse) {
      ids = teacher.top_k_ids.slice(r0, r1);
      log_probs = teacher.top_k_log_probs.slice(r0, r1);
    }
    // The gradient of the logits in the activation dtype (what the LM head's backward reads):
    // in place over the f32 logits, or a bf16 buffer written by the loss kernel itself.
    Tensor dlogits;
    if (whole_backward)
      dlogits = dlogits_all.slice(r0, r1);
    else if (backward)
      dlogits = act == DType::kF32 ? logits : be.empty(act, {n, vocab});
    Tensor terms_c = terms.slice(r0, r1);
    be.kd_loss(logits, teacher_logits, ids, log_probs, label_t.slice(r0, r1), loss,
               static_cast<float>(grad_scale), terms_c, dlogits);
    logits = Tensor();  // f32 chunk no longer needed: its memory serves the next chunk
    if (backward && !whole_backward) {
      Tensor dh_c = dh.slice(r0, r1);
      Tensor db;
      be.linear_backward(h_c, weights_.lm_head, dlogits, dh_c, lm_head_grad, db,
                         backend::GradWrite::kOverwrite, params_.claim_grad(lm_head_grad));
    }
  }
  if (whole_backward) {
    Tensor db;
    be.linear_backward(h, weights_.lm_head, dlogits_all, dh, lm_head_grad, db,
                       backend::GradWrite::kOverwrite, params_.claim_grad(lm_head_grad));
  }
  if (t > 0) {
    const Tensor host_terms = be.download(terms);
    const float* pt = host_terms.data<float>();
    for (int64_t i = 0; i < t; ++i) {
      if (labels[static_cast<std::size_t>(i)] < 0) continue;
      sums.kd += pt[2 * i];
      sums.ce += pt[2 * i + 1];
      ++sums.positions;
    }
  }
  if (backward) {
    Tensor dnorm = grads_.norm;
    dx_act = norm_backward_to_activation(be, x, weights_.norm, eps, dh, dx, dnorm);
  }
  return sums;
}

}  // namespace refinery::train
