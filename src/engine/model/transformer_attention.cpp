// Attention blocks: standard GQA/MHA (FAMILY_NOTES §2) and DeepSeek MLA (§3). New keys/values are
// written straight into the cache rows of this step, then attention runs over all cached rows.
// A batched step (Step::segments > 1, an empty cache) holds independent sequences side by side:
// attention runs per sequence (segment b: rows [b·L, (b+1)·L) of the step and of the cache); RoPE
// runs once over all rows with positions restarting in every segment (rope's segment_length), the
// projections once over all rows.
#include "engine/model/transformer.hpp"
#include "engine/model/transformer_step.hpp"

namespace refinery::model {

namespace {
constexpr float kMlaLoraNormEps =
    1e-6f;  // DeepseekV3RMSNorm(rank) default, regardless of rms_norm_eps

// Causal attention of every segment: queries q [T, H, dk] of segment b against the cache rows
// [b·L, b·L + p0 + L) (its cached prefix and itself), into out [T, H, dv].
void segmented_attention(backend::Backend& be, const Tensor& q, Tensor& keys, Tensor& values,
                         int64_t p0, int64_t segments, int64_t length, float scale, Tensor& out) {
  for (int64_t b = 0; b < segments; ++b) {
    const int64_t r0 = b * length;
    Tensor out_b = out.slice(r0, r0 + length);
    be.attention(q.slice(r0, r0 + length), keys.slice(r0, r0 + p0 + length),
                 values.slice(r0, r0 + p0 + length), scale, out_b);
  }
}
}  // namespace

Tensor Transformer::attention_gqa(Step& s, int layer, const Tensor& h) {
  const AttentionConfig& a = config_.attention;
  const AttentionWeights& w = weights_.layers[static_cast<std::size_t>(layer)].attention;
  const int64_t t = s.tokens, heads = a.num_heads, kv = a.num_kv_heads, d = a.head_dim;
  const int64_t p0 = s.first_position;
  backend::Backend& be = *backend_;

  Tensor q = run_linear(s, h, w.q_proj).view({t, heads, d});
  Tensor k = run_linear(s, h, w.k_proj).view({t, kv, d});
  Tensor v = run_linear(s, h, w.v_proj).view({t, kv, d});
  if (a.qk_norm) {  // qwen3: per-head RMSNorm before RoPE
    const float eps = static_cast<float>(config_.rms_norm_eps);
    Tensor q2 = q.view({t * heads, d}), k2 = k.view({t * kv, d});
    be.rms_norm(q2, w.q_norm, eps, q2);
    be.rms_norm(k2, w.k_norm, eps, k2);
  }
  const int64_t length = s.segment_length();  // RoPE positions restart in every segment
  be.rope(q, rope_, p0, 0, q, length);
  Tensor k_cache = s.cache->keys(layer).slice(p0, p0 + t);
  be.rope(k, rope_, p0, 0, k_cache, length);
  s.cache->values(layer).slice(p0, p0 + t).copy_from(v);

  Tensor out = be.empty(be.activation_dtype(), {t, heads, d});
  segmented_attention(be, q, s.cache->keys(layer), s.cache->values(layer), p0, s.segments, length,
                      static_cast<float>(a.softmax_scale), out);
  return run_linear(s, out.view({t, heads * d}), w.o_proj);
}

Tensor Transformer::attention_mla(Step& s, int layer, const Tensor& h) {
  const AttentionConfig& a = config_.attention;
  const AttentionWeights& w = weights_.layers[static_cast<std::size_t>(layer)].attention;
  const int64_t t = s.tokens, heads = a.num_heads, p0 = s.first_position;
  const int64_t dn = a.qk_nope_head_dim, dr = a.qk_rope_head_dim, dv = a.v_head_dim,
                r = a.kv_lora_rank;
  const int64_t dk = dn + dr;
  backend::Backend& be = *backend_;

  // Query [T, H, dn + dr]; the rope part sits behind the nope part of every head.
  Tensor q;
  if (a.q_lora_rank) {
    Tensor qa = run_linear(s, h, w.q_a_proj);
    be.rms_norm(qa, w.q_a_layernorm, kMlaLoraNormEps, qa);
    q = run_linear(s, qa, w.q_b_proj);
  } else {
    q = run_linear(s, h, w.q_proj);
  }
  q = q.view({t, heads, dk});
  const int64_t length = s.segment_length();  // RoPE positions restart in every segment
  be.rope(q, rope_, p0, dn, q, length);

  // Compressed kv [T, r + dr]: latent c (normed) and one shared rope key (its last dr columns).
  Tensor ckv = run_linear(s, h, w.kv_a_proj_with_mqa);
  Tensor c = be.empty(be.activation_dtype(), {t, r});
  be.copy_columns(ckv, 0, c, 0, r);
  be.rms_norm(c, w.kv_a_layernorm, kMlaLoraNormEps, c);

  // kv_b: [T, H · (dn + dv)] -> cache keys [T, H, dn + dr] (nope part, then the roped shared key
  // of the token in every head) and values [T, H, dv], in one op.
  Tensor kv = run_linear(s, c, w.kv_b_proj);
  Tensor keys = s.cache->keys(layer).slice(p0, p0 + t);
  Tensor values = s.cache->values(layer).slice(p0, p0 + t);
  be.mla_assemble_kv(kv, ckv, rope_, p0, length, keys, values);

  Tensor out = be.empty(be.activation_dtype(), {t, heads, dv});
  segmented_attention(be, q, s.cache->keys(layer), s.cache->values(layer), p0, s.segments, length,
                      static_cast<float>(a.softmax_scale), out);
  return run_linear(s, out.view({t, heads * dv}), w.o_proj);
}

}  // namespace refinery::model
