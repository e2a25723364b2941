// ModelWeights::load: names and shapes per family (FAMILY_NOTES §1-§6).
#include "engine/model/model_weights.hpp"

#include <initializer_list>
#include <map>

#include "engine/backend/awq_dequant.hpp"

namespace refinery::model {

namespace {

// Where the loader finds tensors by name: a checkpoint (memory-mapped), tensors in memory (the
// parameters of a model being trained), or nothing at all (recording which names a config needs).
class TensorLookup {
 public:
  virtual ~TensorLookup() = default;
  // The tensor `name`, or an undefined tensor when absent. `shape` is what the caller expects
  // (the recording lookup uses it; the others return what they hold and the loader checks it).
  virtual Tensor find(const std::string& name, const std::vector<int64_t>& shape) const = 0;
  virtual std::string source() const = 0;  // for messages
};

class CheckpointLookup final : public TensorLookup {
 public:
  explicit CheckpointLookup(const io::Checkpoint& ckpt) : ckpt_(ckpt) {}
  Tensor find(const std::string& name, const std::vector<int64_t>&) const override {
    const auto located = ckpt_.find(name);
    if (!located) return {};
    const io::TensorEntry& e = *located->entry;
    const auto bytes = ckpt_.bytes(name);
    return Tensor::from_external(e.dtype, e.shape, bytes.data(), located->file->keep_alive());
  }
  std::string source() const override { return ckpt_.source().string(); }

 private:
  const io::Checkpoint& ckpt_;
};

class MapLookup final : public TensorLookup {
 public:
  MapLookup(const std::map<std::string, Tensor>& tensors, std::string source)
      : tensors_(tensors), source_(std::move(source)) {}
  Tensor find(const std::string& name, const std::vector<int64_t>&) const override {
    const auto it = tensors_.find(name);
    return it == tensors_.end() ? Tensor() : it->second;
  }
  std::string source() const override { return source_; }

 private:
  const std::map<std::string, Tensor>& tensors_;
  std::string source_;
};

// Records (name, shape) of every tensor the loader takes. Without an inner lookup it answers
// every request with a placeholder of the expected shape and every probe without a shape (has():
// fused experts, a separate lm_head) with "absent", so the per-expert layout and, for tied
// embeddings, the tied head are chosen. With an inner lookup (a checkpoint) it answers from it.
class RecordingLookup final : public TensorLookup {
 public:
  explicit RecordingLookup(const TensorLookup* inner = nullptr) : inner_(inner) {}
  Tensor find(const std::string& name, const std::vector<int64_t>& shape) const override {
    Tensor t = inner_ ? inner_->find(name, shape) : shape.empty() ? Tensor() : placeholder(shape);
    if (!t.defined() || shape.empty()) return t;
    for (const auto& [n, _] : recorded)
      if (n == name) return t;
    recorded.emplace_back(name, t.shape());
    return t;
  }
  std::string source() const override { return inner_ ? inner_->source() : "a configuration"; }
  mutable std::vector<std::pair<std::string, std::vector<int64_t>>> recorded;

 private:
  static Tensor placeholder(const std::vector<int64_t>& shape) {
    static float dummy = 0.0f;  // never read: the loader only takes views and shapes
    return Tensor::from_external(DType::kF32, shape, &dummy, nullptr);
  }
  const TensorLookup* inner_;
};

class Loader {
 public:
  Loader(const TensorLookup& lookup, const ModelConfig& config)
      : lookup_(lookup), config_(config) {}

  bool has(const std::string& name) const { return lookup_.find(name, {}).defined(); }

  // The tensor `name` with exactly `shape`; any float dtype.
  Tensor tensor(const std::string& name, const std::vector<int64_t>& shape) const {
    Tensor t = lookup_.find(name, shape);
    if (!t.defined())
      throw_user_error("tensor ", name, " (expected shape ", shape_to_string(shape),
                       ") is missing from ", lookup_.source(),
                       "; the checkpoint does not match its config.json (", config_.model_type,
                       ", ", config_.num_layers, " layers) or is incomplete");
    if (t.shape() != shape)
      throw_user_error(
          "tensor ", name, " in ", lookup_.source(), ": expected shape ",
          shape_to_string(shape), ", found ", shape_to_string(t.shape()),
          "; the checkpoint does not match its config.json (hidden_size, heads, head dims, "
          "intermediate sizes, vocab_size)");
    if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16 && t.dtype() != DType::kF16 &&
        t.dtype() != DType::kF8E4M3)
      throw_user_error("tensor ", name, " in ", lookup_.source(), " has dtype ",
                       dtype_name(t.dtype()),
                       "; the engine reads F32, BF16, F16 and F8_E4M3 (with weight_scale_inv)");
    return t;
  }

  Tensor optional_tensor(const std::string& name, const std::vector<int64_t>& shape) const {
    return has(name) ? tensor(name, shape) : Tensor();
  }

  // A module listed in quantization_config.modules_to_not_convert: transformers and vLLM skip a
  // module when any listed string is a substring of its name.
  bool not_converted(const std::string& prefix) const {
    for (const std::string& m : config_.quant.modules_to_not_convert)
      if (!m.empty() && prefix.find(m) != std::string::npos) return true;
    return false;
  }

  // AutoAWQ GEMM tensors of `prefix` (qweight, qzeros, scales), validated against [out, in].
  backend::AwqWeight awq(const std::string& prefix, int64_t out, int64_t in) const {
    const QuantConfig& q = config_.quant;
    if (q.version != AwqVersion::kGemm)
      throw_user_error(lookup_.source(), ": quantization_config.version is \"gemv\"; the engine "
                       "executes the AutoAWQ GEMM packing only; requantize with version \"gemm\" "
                       "(refine quantize writes it)");
    backend::AwqWeight a;
    a.bits = q.bits;
    a.group_size = q.group_size;
    a.out = out;
    a.in = in;
    const int64_t pack = backend::awq_pack_factor(q.bits);
    const int64_t words = out % pack == 0 ? out / pack : -1;
    const int64_t groups = in % q.group_size == 0 ? in / q.group_size : -1;
    a.qweight = lookup_.find(prefix + ".qweight", {in, words});
    a.scales = lookup_.find(prefix + ".scales", {groups, out});
    // A layer whose input size the configured group size does not divide may carry a smaller
    // group (refine quantize falls back to the largest dividing one): the scales' rows say which.
    if (a.scales.defined() && a.scales.ndim() == 2 && a.scales.size(0) > 0 &&
        in % a.scales.size(0) == 0 && in / a.scales.size(0) != q.group_size)
      a.group_size = static_cast<int>(in / a.scales.size(0));
    a.qzeros = lookup_.find(prefix + ".qzeros", {in / a.group_size, words});
    for (const auto& [part, t] : {std::pair{"qzeros", a.qzeros}, std::pair{"scales", a.scales}})
      if (!t.defined())
        throw_user_error("tensor ", prefix, ".", part, " is missing from ", lookup_.source(),
                         " (", prefix, ".qweight is there); an AWQ linear needs qweight, qzeros "
                         "and scales: the checkpoint is incomplete");
    backend::validate_awq(a, prefix);
    return a;
  }

  // `prefix`.weight [out, in] (+ `prefix`.bias [out] when `bias`): dense, FP8 block, or AWQ
  // (`prefix`.qweight/qzeros/scales when the config says awq and the module is not excluded).
  LinearWeight linear(const std::string& prefix, int64_t out, int64_t in, bool bias) const {
    LinearWeight w;
    w.name = prefix;
    if (config_.quant.method == QuantMethod::kAwq && !not_converted(prefix) &&
        has(prefix + ".qweight")) {
      w.storage = awq(prefix, out, in);
      if (bias) w.bias = tensor(prefix + ".bias", {out});
      return w;
    }
    Tensor weight = tensor(prefix + ".weight", {out, in});
    if (weight.dtype() == DType::kF8E4M3) {
      const std::string scale_name = prefix + ".weight_scale_inv";
      backend::Fp8BlockWeight f;
      f.weight = weight;
      if (config_.quant.method == QuantMethod::kFp8Block) {
        f.block_out = config_.quant.block_out;
        f.block_in = config_.quant.block_in;
      }
      const int64_t rows = (out + f.block_out - 1) / f.block_out,
                    cols = (in + f.block_in - 1) / f.block_in;
      if (!has(scale_name))
        throw_user_error("tensor ", prefix, ".weight is F8_E4M3 but ", scale_name, " (f32[", rows,
                         ", ", cols, "]) is missing from ", lookup_.source(),
                         "; FP8 weights need their per-block scales (DeepSeek-V3 release format)");
      f.scale_inv = tensor(scale_name, {rows, cols});
      backend::validate_fp8_block(f, prefix);
      w.storage = f;
    } else {
      w.storage = backend::DenseWeight{weight};
    }
    if (bias) w.bias = tensor(prefix + ".bias", {out});
    return w;
  }

  MlpWeights mlp(const std::string& prefix, int64_t hidden, int64_t inter, bool bias,
                 std::initializer_list<const char*> names = {"gate_proj", "up_proj",
                                                             "down_proj"}) const {
    auto it = names.begin();
    MlpWeights m;
    m.gate_proj = linear(prefix + "." + it[0], inter, hidden, bias);
    m.up_proj = linear(prefix + "." + it[1], inter, hidden, bias);
    m.down_proj = linear(prefix + "." + it[2], hidden, inter, bias);
    return m;
  }

  const TensorLookup& lookup_;
  const ModelConfig& config_;
};

AttentionWeights load_attention(const Loader& l, const ModelConfig& c, const std::string& p) {
  const AttentionConfig& a = c.attention;
  const int64_t hidden = c.hidden_size;
  AttentionWeights w;
  if (a.kind == AttentionKind::kGqa) {
    w.q_proj = l.linear(p + "q_proj", int64_t{a.num_heads} * a.head_dim, hidden, a.qkv_bias);
    w.k_proj = l.linear(p + "k_proj", int64_t{a.num_kv_heads} * a.head_dim, hidden, a.qkv_bias);
    w.v_proj = l.linear(p + "v_proj", int64_t{a.num_kv_heads} * a.head_dim, hidden, a.qkv_bias);
    if (a.qk_norm) {
      w.q_norm = l.tensor(p + "q_norm.weight", {a.head_dim});
      w.k_norm = l.tensor(p + "k_norm.weight", {a.head_dim});
    }
    w.o_proj = l.linear(p + "o_proj", hidden, int64_t{a.num_heads} * a.head_dim, a.o_bias);
    return w;
  }
  const int64_t qk = a.qk_nope_head_dim + a.qk_rope_head_dim;
  if (a.q_lora_rank) {
    w.q_a_proj = l.linear(p + "q_a_proj", *a.q_lora_rank, hidden, a.lora_a_bias);
    w.q_a_layernorm = l.tensor(p + "q_a_layernorm.weight", {*a.q_lora_rank});
    w.q_b_proj = l.linear(p + "q_b_proj", a.num_heads * qk, *a.q_lora_rank, false);
  } else {
    w.q_proj = l.linear(p + "q_proj", a.num_heads * qk, hidden, false);
  }
  w.kv_a_proj_with_mqa = l.linear(p + "kv_a_proj_with_mqa", a.kv_lora_rank + a.qk_rope_head_dim,
                                  hidden, a.lora_a_bias);
  w.kv_a_layernorm = l.tensor(p + "kv_a_layernorm.weight", {a.kv_lora_rank});
  w.kv_b_proj =
      l.linear(p + "kv_b_proj", int64_t{a.num_heads} * (a.qk_nope_head_dim + a.v_head_dim),
               a.kv_lora_rank, false);
  w.o_proj = l.linear(p + "o_proj", hidden, int64_t{a.num_heads} * a.v_head_dim, a.o_bias);
  return w;
}

MoeWeights load_moe(const Loader& l, const ModelConfig& c, const std::string& p) {
  const MoeConfig& m = *c.moe;
  const int64_t hidden = c.hidden_size, inter = m.expert_intermediate_size, e_count = m.num_experts;
  const bool mixtral = c.family == ModelFamily::kMixtral;
  MoeWeights w;
  w.router = l.linear(p + ".gate", e_count, hidden, false);
  if (m.score_correction_bias)
    w.correction_bias = l.tensor(p + ".gate.e_score_correction_bias", {e_count});
  const std::string fused_gate_up = p + ".experts.gate_up_proj",
                    fused_down = p + ".experts.down_proj";
  if (l.has(fused_gate_up)) {
    // transformers 5 fused layout: experts.gate_up_proj [E, 2I, H] (gate rows first), down [E, H,
    // I].
    const Tensor gate_up = l.tensor(fused_gate_up, {e_count, 2 * inter, hidden});
    const Tensor down = l.tensor(fused_down, {e_count, hidden, inter});
    if (gate_up.dtype() == DType::kF8E4M3 || down.dtype() == DType::kF8E4M3)
      throw_user_error("tensor ", fused_gate_up,
                       ": fused FP8 expert tensors are not supported; store experts "
                       "per expert (experts.E.gate_proj.weight + weight_scale_inv)");
    for (int64_t e = 0; e < e_count; ++e) {
      const Tensor ge = gate_up.select(e);
      const std::string name = p + ".experts." + std::to_string(e);
      w.experts.push_back(
          {LinearWeight{backend::DenseWeight{ge.slice(0, inter)}, {}, name + ".gate_proj"},
           LinearWeight{backend::DenseWeight{ge.slice(inter, 2 * inter)}, {}, name + ".up_proj"},
           LinearWeight{backend::DenseWeight{down.select(e)}, {}, name + ".down_proj"}});
    }
  } else {
    for (int64_t e = 0; e < e_count; ++e) {
      const std::string q = p + ".experts." + std::to_string(e);
      const MlpWeights x = mixtral ? l.mlp(q, hidden, inter, false, {"w1", "w3", "w2"})
                                   : l.mlp(q, hidden, inter, false);
      w.experts.push_back({x.gate_proj, x.up_proj, x.down_proj});
    }
  }
  if (m.num_shared_experts > 0 && m.shared_intermediate_size > 0) {
    const bool qwen = m.shared_expert_gate || c.family == ModelFamily::kQwen2Moe;
    w.shared = l.mlp(p + (qwen ? ".shared_expert" : ".shared_experts"), hidden,
                     m.shared_intermediate_size, false);
    if (m.shared_expert_gate) w.shared_gate = l.linear(p + ".shared_expert_gate", 1, hidden, false);
  }
  return w;
}

ModelWeights load_weights(const TensorLookup& lookup, const ModelConfig& c) {
  Loader l(lookup, c);
  const int64_t hidden = c.hidden_size, vocab = c.vocab_size;
  ModelWeights w;
  w.embed_tokens = l.tensor("model.embed_tokens.weight", {vocab, hidden});
  w.norm = l.tensor("model.norm.weight", {hidden});
  if (c.tie_word_embeddings && !l.has("lm_head.weight")) {
    w.lm_head = LinearWeight{backend::DenseWeight{w.embed_tokens}, {}, "lm_head"};
  } else {
    w.lm_head = l.linear("lm_head", vocab, hidden, false);
  }
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights layer;
    layer.input_layernorm = l.tensor(p + "input_layernorm.weight", {hidden});
    layer.post_attention_layernorm = l.tensor(p + "post_attention_layernorm.weight", {hidden});
    layer.attention = load_attention(l, c, p + "self_attn.");
    if (c.layer_is_moe(i)) {
      layer.mlp_prefix = p + (c.family == ModelFamily::kMixtral ? "block_sparse_moe" : "mlp");
      layer.moe = load_moe(l, c, layer.mlp_prefix);
    } else {
      layer.mlp_prefix = p + "mlp";
      layer.mlp = l.mlp(layer.mlp_prefix, hidden, c.intermediate_size, c.mlp_bias);
    }
    w.layers.push_back(std::move(layer));
  }
  return w;
}

}  // namespace

ModelWeights ModelWeights::load(const io::Checkpoint& checkpoint, const ModelConfig& config) {
  return load_weights(CheckpointLookup(checkpoint), config);
}

ModelWeights ModelWeights::from_tensors(const std::map<std::string, Tensor>& tensors,
                                        const ModelConfig& config, const std::string& source) {
  return load_weights(MapLookup(tensors, source), config);
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ModelWeights::expected_tensors(
    const ModelConfig& config, const io::Checkpoint* checkpoint) {
  if (checkpoint == nullptr) {
    RecordingLookup lookup;
    load_weights(lookup, config);
    return std::move(lookup.recorded);
  }
  const CheckpointLookup inner(*checkpoint);
  RecordingLookup lookup(&inner);
  load_weights(lookup, config);
  return std::move(lookup.recorded);
}

}  // namespace refinery::model
