// One decoder layer of TrainableModel: the forward of model::Transformer's layer (attention GQA or
// MLA, dense SwiGLU or MoE) keeping its intermediates, and the backward through them. The forward
// follows transformer.cpp / transformer_attention.cpp / transformer_mlp.cpp step by step; each
// backward step is the mirror of a forward step, in reverse order.
#include <variant>

#include "engine/train/trainable_model_internal.hpp"

namespace refinery::train {

namespace {

using backend::Backend;
using backend::GradWrite;
using model::LinearWeight;
using model::MlpWeights;

constexpr float kMlaLoraNormEps = 1e-6f;  // as transformer_attention.cpp (DeepseekV3RMSNorm)


// y[rows, out] = x · Wᵀ (+ b), in `dtype`.
Tensor linear(Backend& be, const Tensor& x, const LinearWeight& w, DType dtype) {
  Tensor y = be.empty(dtype, {x.size(0), w.out_features()});
  be.linear(x, w, y);
  return y;
}

// `t` in the activation dtype (itself when it already is).
Tensor as_activation(Backend& be, const Tensor& t) {
  if (t.dtype() == be.activation_dtype()) return t;
  Tensor y = be.empty(be.activation_dtype(), t.shape());
  be.convert(t, y);
  return y;
}

// dx += dy · W (dx = dy · W with dx_write kOverwrite: dx may then be a fresh, unzeroed buffer);
// the weight's gradient (and its bias's) from the gradient structure `gw`, the weight's
// overwritten when `params` holds it pending (ParameterSet::defer_zero_grad).
void linear_back(Backend& be, ParameterSet& params, const Tensor& x, const LinearWeight& w,
                 const LinearWeight& gw, const Tensor& dy, Tensor& dx,
                 GradWrite dx_write = GradWrite::kAdd) {
  Tensor dw = std::get<backend::DenseWeight>(gw.storage).weight;
  Tensor db = gw.bias;
  const GradWrite dw_write = params.claim_grad(dw);
  be.linear_backward(x, w, as_activation(be, dy), dx, dw, db, dx_write, dw_write);
}

MlpActs mlp_forward(Backend& be, const MlpWeights& w, const Tensor& h) {
  const DType act = be.activation_dtype();
  MlpActs a;
  a.h = h;
  a.g = linear(be, h, w.gate_proj, act);
  a.u = linear(be, h, w.up_proj, act);
  a.s = be.empty(act, a.g.shape());
  be.swiglu(a.g, a.u, a.s);
  a.out = linear(be, a.s, w.down_proj, act);
  return a;
}

// dh += ∂/∂h of the MLP (dh_write kOverwrite: dh = ..., dh may be unzeroed). The intermediate
// gradients are written, never zeroed and re-read.
void mlp_backward(Backend& be, ParameterSet& params, const MlpWeights& w, const MlpWeights& gw,
                  const MlpActs& a, const Tensor& dout, Tensor& dh, GradWrite dh_write) {
  const DType act = be.activation_dtype();
  Tensor ds = be.empty(act, a.s.shape());
  linear_back(be, params, a.s, w.down_proj, gw.down_proj, dout, ds, GradWrite::kOverwrite);
  Tensor dg = be.empty(act, a.g.shape()), du = be.empty(act, a.u.shape());
  be.swiglu_backward(a.g, a.u, ds, dg, du, GradWrite::kOverwrite);
  linear_back(be, params, a.h, w.gate_proj, gw.gate_proj, dg, dh, dh_write);
  linear_back(be, params, a.h, w.up_proj, gw.up_proj, du, dh);
}

MlpWeights expert_mlp(const backend::ExpertWeights& e) { return {e.gate, e.up, e.down}; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// forward

void TrainableModel::layer_forward(const Batch& b, int l, Tensor& x, LayerActs& a) {
  Backend& be = *backend_;
  const DType act = be.activation_dtype();
  const model::LayerWeights& lw = weights_.layers[static_cast<std::size_t>(l)];
  const model::AttentionConfig& ac = config_.attention;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float scale = static_cast<float>(ac.softmax_scale);
  const int64_t t = b.t, len = b.length, heads = ac.num_heads, hidden = config_.hidden_size;

  // The residual adds below write new buffers (x is rebound), so the input is kept without a copy.
  a.x_in = x;
  a.h1 = be.empty(act, {t, hidden});
  be.rms_norm(x, lw.input_layernorm, eps, a.h1);
  const model::AttentionWeights& w = lw.attention;

  if (ac.kind == model::AttentionKind::kGqa) {
    const int64_t kvh = ac.num_kv_heads, d = ac.head_dim;
    a.q0 = linear(be, a.h1, w.q_proj, act).view({t, heads, d});
    a.k0 = linear(be, a.h1, w.k_proj, act).view({t, kvh, d});
    a.v = linear(be, a.h1, w.v_proj, act).view({t, kvh, d});
    a.qn = a.q0;
    a.kn = a.k0;
    if (ac.qk_norm) {  // qwen3: per-head RMSNorm before RoPE
      a.qn = be.empty(act, {t, heads, d});
      a.kn = be.empty(act, {t, kvh, d});
      Tensor qn2 = a.qn.view({t * heads, d}), kn2 = a.kn.view({t * kvh, d});
      be.rms_norm(a.q0.view({t * heads, d}), w.q_norm, eps, qn2);
      be.rms_norm(a.k0.view({t * kvh, d}), w.k_norm, eps, kn2);
    }
    a.q = be.empty(act, {t, heads, d});
    a.k = be.empty(act, {t, kvh, d});
    // rope_ restarts the positions in every window (TrainableModel::run).
    be.rope(a.qn, rope_, 0, 0, a.q);
    be.rope(a.kn, rope_, 0, 0, a.k);
    a.keys = a.k;
    a.values = a.v;
  } else {
    const int64_t dn = ac.qk_nope_head_dim, dr = ac.qk_rope_head_dim, dv = ac.v_head_dim,
                  r = ac.kv_lora_rank, dk = dn + dr;
    if (ac.q_lora_rank) {
      a.qa = linear(be, a.h1, w.q_a_proj, act);
      a.qan = be.empty(act, a.qa.shape());
      be.rms_norm(a.qa, w.q_a_layernorm, kMlaLoraNormEps, a.qan);
      a.q0 = linear(be, a.qan, w.q_b_proj, act).view({t, heads, dk});
    } else {
      a.q0 = linear(be, a.h1, w.q_proj, act).view({t, heads, dk});
    }
    a.ckv = linear(be, a.h1, w.kv_a_proj_with_mqa, act);
    a.c = be.empty(act, {t, r});
    be.copy_columns(a.ckv, 0, a.c, 0, r);
    a.cn = be.empty(act, {t, r});
    be.rms_norm(a.c, w.kv_a_layernorm, kMlaLoraNormEps, a.cn);
    a.kpe0 = be.empty(act, {t, 1, dr});
    Tensor kpe0_2 = a.kpe0.view({t, dr});
    be.copy_columns(a.ckv, r, kpe0_2, 0, dr);
    a.q = be.empty(act, {t, heads, dk});
    a.kpe = be.empty(act, {t, 1, dr});
    be.rope(a.q0, rope_, 0, dn, a.q);
    be.rope(a.kpe0, rope_, 0, 0, a.kpe);
    a.kv = linear(be, a.cn, w.kv_b_proj, act);
    // keys [T·H, dk] = (nope part of kv_b, the shared rope key broadcast to every head);
    // values [T·H, dv] = the v part of kv_b.
    a.keys = be.empty(act, {t, heads, dk});
    a.values = be.empty(act, {t, heads, dv});
    const Tensor kv_heads = a.kv.view({t * heads, dn + dv});
    Tensor keys2 = a.keys.view({t * heads, dk}), values2 = a.values.view({t * heads, dv});
    be.copy_columns(kv_heads, 0, keys2, 0, dn);
    be.copy_columns(kv_heads, dn, values2, 0, dv);
    be.copy_columns(a.kpe.view({t, dr}), 0, keys2, dn, dr);
  }

  const int64_t dv = ac.value_head_dim();
  a.o = be.empty(act, {t, heads, dv});
  a.lse.clear();
  for (int64_t r0 = 0; r0 < t; r0 += len) {
    Tensor o_b = a.o.slice(r0, r0 + len);
    be.attention_with_lse(a.q.slice(r0, r0 + len), a.keys.slice(r0, r0 + len),
                          a.values.slice(r0, r0 + len), scale, o_b, a.lse.emplace_back());
  }
  const Tensor attn_out = linear(be, a.o.view({t, heads * dv}), w.o_proj, act);
  a.x_mid = be.empty(x.dtype(), x.shape());
  be.add(a.x_in, attn_out, a.x_mid);
  x = a.x_mid;

  a.h2 = be.empty(act, {t, hidden});
  be.rms_norm(x, lw.post_attention_layernorm, eps, a.h2);
  if (!lw.moe) {
    a.mlp = mlp_forward(be, *lw.mlp, a.h2);
    x = be.empty(a.x_mid.dtype(), a.x_mid.shape());
    be.add(a.x_mid, a.mlp.out, x);
    return;
  }

  // MoE: route (f32 logits, as transformers), every expert over the rows routed to it, shared.
  const model::MoeWeights& mw = *lw.moe;
  const int64_t k = router_.top_k;
  a.router_logits = linear(be, a.h2, mw.router, DType::kF32);
  a.experts = be.empty(DType::kI32, {t, k});
  a.weights = be.empty(DType::kF32, {t, k});
  be.route(a.router_logits, mw.correction_bias, router_, a.experts, a.weights);
  const Tensor host_e = be.download(a.experts), host_w = be.download(a.weights);
  const int32_t* pe = host_e.data<int32_t>();
  const float* pw = host_w.data<float>();
  if (counting_load_) {  // loads for update_correction_bias
    if (expert_load_.size() < static_cast<std::size_t>(config_.num_layers))
      expert_load_.resize(static_cast<std::size_t>(config_.num_layers));
    std::vector<int64_t>& load = expert_load_[static_cast<std::size_t>(l)];
    load.resize(mw.experts.size(), 0);
    for (int64_t i = 0; i < t * k; ++i) ++load[static_cast<std::size_t>(pe[i])];
  }
  Tensor y = zeros(be, act, {t, hidden});
  a.routed.clear();
  for (std::size_t e = 0; e < mw.experts.size(); ++e) {
    std::vector<int32_t> rows, pos;
    std::vector<float> scale_e;
    for (int64_t i = 0; i < t * k; ++i)
      if (pe[i] == static_cast<int32_t>(e)) {
        rows.push_back(static_cast<int32_t>(i / k));
        pos.push_back(static_cast<int32_t>(i));
        scale_e.push_back(pw[i]);
      }
    if (rows.empty()) continue;
    const int64_t n = static_cast<int64_t>(rows.size());
    ExpertActs ea;
    ea.expert = static_cast<int>(e);
    ea.rows = be.upload(Tensor::copy_of(DType::kI32, {n}, rows.data()));
    ea.scale = be.upload(Tensor::copy_of(DType::kF32, {n}, scale_e.data()));
    ea.pos = std::move(pos);
    Tensor xe = be.empty(act, {n, hidden});
    be.gather_rows(a.h2, ea.rows, xe);
    ea.mlp = mlp_forward(be, expert_mlp(mw.experts[e]), xe);
    be.scatter_add_rows(ea.mlp.out, ea.rows, ea.scale, y);
    a.routed.push_back(std::move(ea));
  }
  if (mw.shared) {
    a.shared = mlp_forward(be, *mw.shared, a.h2);
    if (mw.shared_gate.defined()) {
      a.shared_gate = linear(be, a.h2, mw.shared_gate, act);
      Tensor gated = be.empty(act, {t, hidden});
      be.sigmoid_gate(a.shared.out, a.shared_gate, gated);
      be.add(y, gated, y);
    } else {
      be.add(y, a.shared.out, y);
    }
  }
  x = be.empty(a.x_mid.dtype(), a.x_mid.shape());
  be.add(a.x_mid, y, x);
}

// ---------------------------------------------------------------------------------------------
// backward

void TrainableModel::layer_backward(const Batch& b, int l, LayerActs& a, Tensor& dx,
                                    Tensor& dx_act) {
  Backend& be = *backend_;
  const DType act = be.activation_dtype();
  const auto li = static_cast<std::size_t>(l);
  const model::LayerWeights& lw = weights_.layers[li];
  const model::LayerWeights& gl = grads_.layers[li];
  const model::AttentionConfig& ac = config_.attention;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float scale = static_cast<float>(ac.softmax_scale);
  const int64_t t = b.t, len = b.length, heads = ac.num_heads, hidden = config_.hidden_size;

  // ---- MLP block: x_out = x_mid + mlp(h2), h2 = norm(x_mid). dx holds ∂/∂x_out.
  const Tensor dm = dx_act.defined() ? dx_act : as_activation(be, dx);
  // A dense MLP writes dh2 whole (first write overwrites); the MoE branches add into zeros.
  Tensor dh2 = lw.moe ? zeros(be, act, {t, hidden}) : be.empty(act, {t, hidden});
  if (!lw.moe) {
    mlp_backward(be, params_, *lw.mlp, *gl.mlp, a.mlp, dm, dh2, GradWrite::kOverwrite);
  } else {
    const model::MoeWeights& mw = *lw.moe;
    const model::MoeWeights& mg = *gl.moe;
    if (mw.shared) {
      if (mw.shared_gate.defined()) {
        Tensor dshared = zeros(be, act, {t, hidden}), dgate = zeros(be, act, {t, 1});
        be.sigmoid_gate_backward(a.shared.out, a.shared_gate, dm, dshared, dgate);
        linear_back(be, params_, a.h2, mw.shared_gate, mg.shared_gate, dgate, dh2);
        mlp_backward(be, params_, *mw.shared, *mg.shared, a.shared, dshared, dh2,
                     GradWrite::kAdd);
      } else {
        mlp_backward(be, params_, *mw.shared, *mg.shared, a.shared, dm, dh2, GradWrite::kAdd);
      }
    }
    const int64_t k = router_.top_k;
    std::vector<float> dweights(static_cast<std::size_t>(t * k), 0.0f);
    for (ExpertActs& ea : a.routed) {
      const int64_t n = ea.rows.size(0);
      Tensor dout = zeros(be, act, {n, hidden}), dscale = zeros(be, DType::kF32, {n});
      be.scatter_add_rows_backward(ea.mlp.out, ea.rows, ea.scale, dm, dout, dscale);
      Tensor dxe = be.empty(act, {n, hidden});
      const auto e = static_cast<std::size_t>(ea.expert);
      mlp_backward(be, params_, expert_mlp(mw.experts[e]), expert_mlp(mg.experts[e]), ea.mlp,
                   dout, dxe, GradWrite::kOverwrite);
      std::vector<float> ones(static_cast<std::size_t>(n), 1.0f);
      be.scatter_add_rows(dxe, ea.rows, be.upload(Tensor::copy_of(DType::kF32, {n}, ones.data())),
                          dh2);  // the gather's backward
      const Tensor host_ds = be.download(dscale);
      for (int64_t i = 0; i < n; ++i)
        dweights[static_cast<std::size_t>(ea.pos[static_cast<std::size_t>(i)])] +=
            host_ds.data<float>()[i];
    }
    const Tensor dw = be.upload(Tensor::copy_of(DType::kF32, {t, k}, dweights.data()));
    Tensor dlogits = zeros(be, DType::kF32, a.router_logits.shape());
    be.route_backward(a.router_logits, router_, a.experts, dw, dlogits);
    linear_back(be, params_, a.h2, mw.router, mg.router, dlogits, dh2);
  }
  Tensor dln2 = gl.post_attention_layernorm;
  const Tensor da = norm_backward_to_activation(be, a.x_mid, lw.post_attention_layernorm, eps, dh2,
                                                dx, dln2);

  // ---- attention block: x_mid = x_in + o_proj(attn(h1)), h1 = norm(x_in). dx holds ∂/∂x_mid.
  const model::AttentionWeights& w = lw.attention;
  const model::AttentionWeights& gw = gl.attention;
  const int64_t dv = ac.value_head_dim();
  // GQA writes dh1 whole with its first projection (q); MLA's branches add into zeros.
  const bool gqa = ac.kind == model::AttentionKind::kGqa;
  Tensor dh1 = gqa ? be.empty(act, {t, hidden}) : zeros(be, act, {t, hidden});
  Tensor d_o = be.empty(act, {t, heads, dv});
  {
    Tensor d_o2 = d_o.view({t, heads * dv});
    linear_back(be, params_, a.o.view({t, heads * dv}), w.o_proj, gw.o_proj, da, d_o2,
                GradWrite::kOverwrite);
  }
  // The sequences of the micro-batch cover dq, dkeys, dvalues exactly once: written, not added.
  Tensor dq = be.empty(act, a.q.shape()), dkeys = be.empty(act, a.keys.shape()),
         dvalues = be.empty(act, a.values.shape());
  for (int64_t r0 = 0, s = 0; r0 < t; r0 += len, ++s) {
    Tensor dq_b = dq.slice(r0, r0 + len), dk_b = dkeys.slice(r0, r0 + len),
           dv_b = dvalues.slice(r0, r0 + len);
    be.attention_backward(a.q.slice(r0, r0 + len), a.keys.slice(r0, r0 + len),
                          a.values.slice(r0, r0 + len), a.o.slice(r0, r0 + len),
                          d_o.slice(r0, r0 + len), scale, dq_b, dk_b, dv_b,
                          GradWrite::kOverwrite, a.lse[static_cast<std::size_t>(s)]);
  }

  if (gqa) {
    const int64_t kvh = ac.num_kv_heads, d = ac.head_dim;
    Tensor dqn = be.empty(act, a.q.shape()), dkn = be.empty(act, a.k.shape());
    be.rope_backward(dq, rope_, 0, 0, dqn, GradWrite::kOverwrite);
    be.rope_backward(dkeys, rope_, 0, 0, dkn, GradWrite::kOverwrite);
    Tensor dq0 = dqn, dk0 = dkn;
    if (ac.qk_norm) {
      dq0 = zeros(be, act, a.q0.shape());
      dk0 = zeros(be, act, a.k0.shape());
      Tensor dq02 = dq0.view({t * heads, d}), dk02 = dk0.view({t * kvh, d});
      Tensor dqnorm = gw.q_norm, dknorm = gw.k_norm;
      be.rms_norm_backward(a.q0.view({t * heads, d}), w.q_norm, eps, dqn.view({t * heads, d}),
                           dq02, dqnorm);
      be.rms_norm_backward(a.k0.view({t * kvh, d}), w.k_norm, eps, dkn.view({t * kvh, d}), dk02,
                           dknorm);
    }
    linear_back(be, params_, a.h1, w.q_proj, gw.q_proj, dq0.view({t, heads * d}), dh1,
                GradWrite::kOverwrite);
    linear_back(be, params_, a.h1, w.k_proj, gw.k_proj, dk0.view({t, kvh * d}), dh1);
    linear_back(be, params_, a.h1, w.v_proj, gw.v_proj, dvalues.view({t, kvh * d}), dh1);
  } else {
    const int64_t dn = ac.qk_nope_head_dim, dr = ac.qk_rope_head_dim, r = ac.kv_lora_rank,
                  dk = dn + dr;
    // keys/values <- kv_b output and the shared rope key.
    Tensor dkv = zeros(be, act, a.kv.shape()), dkpe = zeros(be, act, {t, 1, dr});
    {
      Tensor dkv_heads = dkv.view({t * heads, dn + dv}), dkpe2 = dkpe.view({t, dr});
      const Tensor dkeys2 = dkeys.view({t * heads, dk}), dvalues2 = dvalues.view({t * heads, dv});
      be.copy_columns_backward(dkeys2, 0, dkv_heads, 0, dn);
      be.copy_columns_backward(dvalues2, 0, dkv_heads, dn, dv);
      be.copy_columns_backward(dkeys2, dn, dkpe2, 0, dr);  // sums over the heads
    }
    Tensor dcn = zeros(be, act, {t, r});
    linear_back(be, params_, a.cn, w.kv_b_proj, gw.kv_b_proj, dkv, dcn);
    Tensor dc = zeros(be, act, {t, r});
    {
      Tensor dkvln = gw.kv_a_layernorm;
      be.rms_norm_backward(a.c, w.kv_a_layernorm, kMlaLoraNormEps, dcn, dc, dkvln);
    }
    Tensor dkpe0 = be.empty(act, {t, 1, dr}), dq0 = be.empty(act, a.q0.shape());
    be.rope_backward(dkpe, rope_, 0, 0, dkpe0, GradWrite::kOverwrite);
    be.rope_backward(dq, rope_, 0, dn, dq0, GradWrite::kOverwrite);
    Tensor dckv = zeros(be, act, a.ckv.shape());
    be.copy_columns_backward(dc, 0, dckv, 0, r);
    be.copy_columns_backward(dkpe0.view({t, dr}), 0, dckv, r, dr);
    linear_back(be, params_, a.h1, w.kv_a_proj_with_mqa, gw.kv_a_proj_with_mqa, dckv, dh1);
    const Tensor dq02 = dq0.view({t, heads * dk});
    if (ac.q_lora_rank) {
      Tensor dqan = zeros(be, act, a.qan.shape()), dqa = zeros(be, act, a.qa.shape());
      linear_back(be, params_, a.qan, w.q_b_proj, gw.q_b_proj, dq02, dqan);
      Tensor dqaln = gw.q_a_layernorm;
      be.rms_norm_backward(a.qa, w.q_a_layernorm, kMlaLoraNormEps, dqan, dqa, dqaln);
      linear_back(be, params_, a.h1, w.q_a_proj, gw.q_a_proj, dqa, dh1);
    } else {
      linear_back(be, params_, a.h1, w.q_proj, gw.q_proj, dq02, dh1);
    }
  }
  Tensor dln1 = gl.input_layernorm;
  dx_act = norm_backward_to_activation(be, a.x_in, lw.input_layernorm, eps, dh1, dx, dln1);
}

}  // namespace refinery::train
