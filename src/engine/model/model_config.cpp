#include "engine/model/model_config.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/model/config_json.hpp"

namespace refinery::model {

namespace {

// Defaults of the fields that a real config.json may omit, per family, as transformers (4.x and
// 5.x agree on these) fills them in. Size fields (hidden_size, layers, heads, vocab, widths) are
// required instead: a config without them would silently become llama-7b.
struct FamilyDefaults {
  ModelFamily family;
  const char* model_type;
  int kv_heads;          // num_key_value_heads when absent; 0 = num_attention_heads
  double rms_norm_eps;
  double rope_theta;
  int head_dim;          // head_dim when absent; 0 = hidden_size / num_attention_heads
};

constexpr FamilyDefaults kFamilies[] = {
    {ModelFamily::kLlama, "llama", 0, 1e-6, 1e4, 0},
    {ModelFamily::kMistral, "mistral", 8, 1e-6, 1e4, 0},
    {ModelFamily::kQwen2, "qwen2", 32, 1e-6, 1e4, 0},
    {ModelFamily::kQwen3, "qwen3", 32, 1e-6, 1e4, 128},
    {ModelFamily::kMixtral, "mixtral", 8, 1e-5, 1e6, 0},
    {ModelFamily::kQwen2Moe, "qwen2_moe", 16, 1e-6, 1e4, 0},
    {ModelFamily::kQwen3Moe, "qwen3_moe", 4, 1e-6, 1e4, 0},
    {ModelFamily::kDeepseekV2, "deepseek_v2", 0, 1e-6, 1e4, 0},
    {ModelFamily::kDeepseekV3, "deepseek_v3", 0, 1e-6, 1e4, 0},
};

const FamilyDefaults& defaults_of(ModelFamily family) {
  for (const auto& f : kFamilies)
    if (f.family == family) return f;
  throw_internal_error("no defaults for model family ", static_cast<int>(family));
}

int positive_int(const ConfigJson& c, const std::string& key, const std::string& meaning) {
  int64_t v = c.require_int(key, meaning);
  if (v <= 0 || v > (int64_t{1} << 31) - 1) c.fail(key, str("expected a positive integer (", meaning, "), found ", v));
  return static_cast<int>(v);
}

int positive_or(const ConfigJson& c, const std::string& key, int fallback) {
  if (!c.has(key)) return fallback;
  int64_t v = *c.get_int(key);
  if (v <= 0 || v > (int64_t{1} << 31) - 1) c.fail(key, str("expected a positive integer, found ", v));
  return static_cast<int>(v);
}

std::optional<DType> parse_dtype(const ConfigJson& c) {
  // 5.x writes `dtype`, 4.x `torch_dtype`; prefer the newer one when both exist.
  const std::string key = c.has("dtype") ? "dtype" : "torch_dtype";
  std::optional<std::string> name = c.get_string(key);
  if (!name || *name == "auto") return std::nullopt;
  std::string n = *name;
  if (n.rfind("torch.", 0) == 0) n = n.substr(6);
  if (n == "bfloat16") return DType::kBF16;
  if (n == "float16" || n == "half") return DType::kF16;
  if (n == "float32" || n == "float") return DType::kF32;
  c.fail(key, str("dtype \"", *name, "\" is not supported; expected \"bfloat16\", \"float16\" or \"float32\"."));
}

void parse_gqa(const ConfigJson& c, const FamilyDefaults& d, ModelConfig& m) {
  AttentionConfig& a = m.attention;
  a.kind = AttentionKind::kGqa;
  a.num_kv_heads = positive_or(c, "num_key_value_heads", d.kv_heads != 0 ? d.kv_heads : a.num_heads);
  if (a.num_heads % a.num_kv_heads != 0)
    c.fail("num_key_value_heads", str("num_attention_heads (", a.num_heads, ") must be a multiple of "
                                      "num_key_value_heads (", a.num_kv_heads, ")."));
  int head_dim_default = d.head_dim;
  if (head_dim_default == 0) {
    if (m.hidden_size % a.num_heads != 0 && !c.has("head_dim"))
      c.fail("num_attention_heads", str("hidden_size (", m.hidden_size, ") is not a multiple of "
                                        "num_attention_heads (", a.num_heads, ") and no head_dim is given."));
    head_dim_default = m.hidden_size / a.num_heads;
  }
  a.head_dim = positive_or(c, "head_dim", head_dim_default);

  bool attention_bias = c.bool_or("attention_bias", false);
  switch (m.family) {
    case ModelFamily::kQwen2:  // transformers hard-codes q/k/v bias on and o_proj bias off
      a.qkv_bias = true;
      break;
    case ModelFamily::kQwen2Moe:  // 5.x `qkv_bias` (default true); 4.x always true
      a.qkv_bias = c.bool_or("qkv_bias", true);
      break;
    case ModelFamily::kMistral:
    case ModelFamily::kMixtral:  // no bias anywhere, whatever the config says
      break;
    default:  // llama, qwen3, qwen3_moe: attention_bias on q, k, v and o
      a.qkv_bias = attention_bias;
      a.o_bias = attention_bias;
  }
  a.qk_norm = m.family == ModelFamily::kQwen3 || m.family == ModelFamily::kQwen3Moe;
  a.softmax_scale = 1.0 / std::sqrt(static_cast<double>(a.head_dim));
}

void parse_mla(const ConfigJson& c, ModelConfig& m) {
  AttentionConfig& a = m.attention;
  a.kind = AttentionKind::kMla;
  a.num_kv_heads = a.num_heads;
  // q_lora_rank must be present: null is meaningful (no q LoRA) and transformers' default (1536)
  // would silently change the architecture.
  if (!c.has_key("q_lora_rank"))
    throw_user_error(c.source(), ": required field `q_lora_rank` (rank of the query LoRA; null for a plain "
                     "q_proj) is missing. Add it to the config.");
  if (c.has("q_lora_rank")) a.q_lora_rank = positive_or(c, "q_lora_rank", 0);
  a.kv_lora_rank = positive_int(c, "kv_lora_rank", "rank of the compressed KV latent");
  a.qk_nope_head_dim = positive_int(c, "qk_nope_head_dim", "per-head query/key width without RoPE");
  a.qk_rope_head_dim = positive_int(c, "qk_rope_head_dim", "per-head query/key width with RoPE");
  a.v_head_dim = positive_int(c, "v_head_dim", "per-head value width");
  // 5.x writes head_dim = qk_rope_head_dim for these models; it is not the attention width.
  a.head_dim = a.qk_nope_head_dim + a.qk_rope_head_dim;
  bool attention_bias = c.bool_or("attention_bias", false);
  a.lora_a_bias = attention_bias;
  a.o_bias = attention_bias;
  a.softmax_scale = 1.0 / std::sqrt(static_cast<double>(a.head_dim));
}

void parse_moe(const ConfigJson& c, ModelConfig& m) {
  MoeConfig e;
  const bool deepseek = m.family == ModelFamily::kDeepseekV2 || m.family == ModelFamily::kDeepseekV3;
  const char* experts_key = deepseek ? "n_routed_experts"
                            : m.family == ModelFamily::kMixtral ? "num_local_experts" : "num_experts";
  // transformers maps the other spellings onto these (attribute_map); accept them too.
  for (const char* alias : {"n_routed_experts", "num_local_experts", "num_experts"})
    if (!c.has(experts_key) && c.has(alias)) experts_key = alias;
  e.num_experts = positive_int(c, experts_key, "number of routed experts per MoE layer");
  e.experts_per_token = positive_int(c, "num_experts_per_tok", "experts chosen per token (top-k)");
  if (e.experts_per_token > e.num_experts)
    c.fail("num_experts_per_tok", str("top-k (", e.experts_per_token, ") exceeds the number of experts (",
                                      e.num_experts, ")."));
  e.expert_intermediate_size = m.family == ModelFamily::kMixtral
                                   ? m.intermediate_size
                                   : positive_int(c, "moe_intermediate_size", "width of one routed expert");

  switch (m.family) {
    case ModelFamily::kMixtral:
      e.norm_topk_prob = true;  // transformers always renormalizes mixtral's top-2
      break;
    case ModelFamily::kQwen2Moe:
    case ModelFamily::kQwen3Moe: {
      e.norm_topk_prob = c.bool_or("norm_topk_prob", false);
      e.decoder_sparse_step = positive_or(c, "decoder_sparse_step", 1);
      for (int64_t l : c.get_int_list("mlp_only_layers").value_or(std::vector<int64_t>{})) {
        if (l < 0 || l >= m.num_layers)
          c.fail("mlp_only_layers", str("layer ", l, " is outside 0..", m.num_layers - 1, "."));
        e.mlp_only_layers.push_back(static_cast<int>(l));
      }
      if (m.family == ModelFamily::kQwen2Moe) {
        e.shared_intermediate_size = static_cast<int>(c.int_or("shared_expert_intermediate_size", 0));
        if (e.shared_intermediate_size < 0) c.fail("shared_expert_intermediate_size", "expected >= 0.");
        e.num_shared_experts = e.shared_intermediate_size > 0 ? 1 : 0;
        e.shared_expert_gate = e.num_shared_experts > 0;
      }
      break;
    }
    default: {  // deepseek_v2 / deepseek_v3
      const bool v3 = m.family == ModelFamily::kDeepseekV3;
      std::string scoring = c.get_string("scoring_func").value_or(v3 ? "sigmoid" : "softmax");
      if (scoring != (v3 ? "sigmoid" : "softmax"))
        c.fail("scoring_func", str("\"", scoring, "\" is not what transformers' ", m.model_type, " computes (",
                                   v3 ? "sigmoid" : "softmax", "); fix the config."));
      e.scoring = v3 ? RouterScoring::kSigmoid : RouterScoring::kSoftmax;
      std::string method = c.get_string("topk_method").value_or(v3 ? "noaux_tc" : "greedy");
      if (v3 && method != "noaux_tc")
        c.fail("topk_method", str("\"", method, "\": transformers' deepseek_v3 always routes with \"noaux_tc\"."));
      if (!v3 && method != "greedy" && method != "group_limited_greedy")
        c.fail("topk_method", str("\"", method, "\" is not supported for deepseek_v2; expected \"greedy\" or "
                                  "\"group_limited_greedy\"."));
      e.topk_method = method == "noaux_tc"               ? TopkMethod::kNoauxTc
                      : method == "group_limited_greedy" ? TopkMethod::kGroupLimitedGreedy
                                                         : TopkMethod::kGreedy;
      e.score_correction_bias = e.topk_method == TopkMethod::kNoauxTc;
      e.n_group = positive_or(c, "n_group", v3 ? 8 : 1);
      e.topk_group = positive_or(c, "topk_group", v3 ? 4 : 1);
      if (e.topk_method != TopkMethod::kGreedy) {
        if (e.num_experts % e.n_group != 0)
          c.fail("n_group", str("n_routed_experts (", e.num_experts, ") must be a multiple of n_group (", e.n_group, ")."));
        if (e.topk_group > e.n_group)
          c.fail("topk_group", str("topk_group (", e.topk_group, ") exceeds n_group (", e.n_group, ")."));
      }
      e.norm_topk_prob = c.bool_or("norm_topk_prob", v3);
      if (!v3 && e.norm_topk_prob)
        log::warn(c.source(), ": deepseek_v2 with norm_topk_prob=true: DeepSeek's own code renormalizes the "
                  "top-k weights, transformers 5.x's deepseek_v2 does not; the engine follows the config.");
      e.routed_scaling_factor = c.number_or("routed_scaling_factor", v3 ? 2.5 : 1.0);
      e.num_shared_experts = static_cast<int>(c.int_or("n_shared_experts", v3 ? 1 : 2));
      if (e.num_shared_experts < 0) c.fail("n_shared_experts", "expected >= 0.");
      e.shared_intermediate_size = e.num_shared_experts * e.expert_intermediate_size;
      e.first_k_dense_replace = static_cast<int>(c.int_or("first_k_dense_replace", v3 ? 3 : 0));
      if (e.first_k_dense_replace < 0) c.fail("first_k_dense_replace", "expected >= 0.");
      e.moe_layer_freq = positive_or(c, "moe_layer_freq", 1);
    }
  }
  m.moe = std::move(e);
}

ModelFamily family_of(const ConfigJson& c) {
  if (!c.has("model_type")) {
    std::string list;
    for (const auto& t : supported_model_types()) list += (list.empty() ? "" : ", ") + t;
    throw_user_error(c.source(), ": required field `model_type` (the architecture family) is missing. "
                     "Supported: ", list, ".");
  }
  std::string type = *c.get_string("model_type");
  for (const auto& f : kFamilies)
    if (type == f.model_type) return f.family;
  std::string list;
  for (const auto& t : supported_model_types()) list += (list.empty() ? "" : ", ") + t;
  c.fail("model_type", str("model type \"", type, "\" is not supported. Supported model types: ", list, "."));
}

}  // namespace

const std::vector<std::string>& supported_model_types() {
  static const std::vector<std::string> types = [] {
    std::vector<std::string> out;
    for (const auto& f : kFamilies) out.emplace_back(f.model_type);
    return out;
  }();
  return types;
}

const char* model_type_name(ModelFamily family) { return defaults_of(family).model_type; }

bool ModelConfig::layer_is_moe(int layer) const {
  if (!moe || layer < 0 || layer >= num_layers) return false;
  const MoeConfig& e = *moe;
  if (layer < e.first_k_dense_replace) return false;
  if (layer % e.moe_layer_freq != 0) return false;
  if ((layer + 1) % e.decoder_sparse_step != 0) return false;
  return std::find(e.mlp_only_layers.begin(), e.mlp_only_layers.end(), layer) == e.mlp_only_layers.end();
}

int ModelConfig::num_moe_layers() const {
  int n = 0;
  for (int l = 0; l < num_layers; ++l) n += layer_is_moe(l) ? 1 : 0;
  return n;
}

ModelConfig parse_model_config(const nlohmann::json& json, const std::string& source_name) {
  ConfigJson c(json, source_name);
  ModelConfig m;
  m.source = source_name;
  m.family = family_of(c);
  m.model_type = model_type_name(m.family);
  const FamilyDefaults& d = defaults_of(m.family);

  m.vocab_size = positive_int(c, "vocab_size", "number of token ids: rows of embed_tokens and lm_head");
  m.hidden_size = positive_int(c, "hidden_size", "width of the residual stream");
  m.num_layers = positive_int(c, "num_hidden_layers", "number of decoder layers");
  m.intermediate_size = positive_int(c, "intermediate_size", "width of the dense SwiGLU MLP");
  m.attention.num_heads = positive_int(c, "num_attention_heads", "number of query heads");
  m.max_position_embeddings =
      positive_int(c, "max_position_embeddings", "the longest context the model was configured for");
  m.rms_norm_eps = c.number_or("rms_norm_eps", d.rms_norm_eps);
  if (!(m.rms_norm_eps > 0.0)) c.fail("rms_norm_eps", str("expected a positive epsilon, found ", m.rms_norm_eps));
  m.tie_word_embeddings = c.bool_or("tie_word_embeddings", false);
  if (m.family == ModelFamily::kLlama || m.family == ModelFamily::kDeepseekV2) m.mlp_bias = c.bool_or("mlp_bias", false);
  std::string act = c.get_string("hidden_act").value_or("silu");
  if (act != "silu")
    c.fail("hidden_act", str("activation \"", act, "\" is not supported; every supported family uses \"silu\" (SwiGLU)."));

  // Sliding-window attention: mistral (default 4096 when the key is absent) and mixtral apply it;
  // the qwen families only with use_sliding_window, and then per layer, which we do not support.
  if (m.family == ModelFamily::kMistral || m.family == ModelFamily::kMixtral) {
    if (c.has("sliding_window")) {
      m.sliding_window = positive_or(c, "sliding_window", 0);
    } else if (m.family == ModelFamily::kMistral && !c.has_key("sliding_window")) {
      m.sliding_window = 4096;
    }
  } else if (c.bool_or("use_sliding_window", false)) {
    c.fail("use_sliding_window", "per-layer sliding-window attention is not supported; set it to false.");
  }

  const bool mla = m.family == ModelFamily::kDeepseekV2 || m.family == ModelFamily::kDeepseekV3;
  if (mla) {
    parse_mla(c, m);
  } else {
    parse_gqa(c, d, m);
  }

  const bool moe_family = mla || m.family == ModelFamily::kMixtral || m.family == ModelFamily::kQwen2Moe ||
                          m.family == ModelFamily::kQwen3Moe;
  if (moe_family) parse_moe(c, m);

  m.rope = parse_rope_config(c, d.rope_theta, m.max_position_embeddings);
  if (mla) {
    m.rope.rotary_dim = m.attention.qk_rope_head_dim;
    // deepseek_v2 always rotates interleaved pairs; deepseek_v3 unless `rope_interleave` is false.
    m.rope.pairing = m.family == ModelFamily::kDeepseekV2 || c.bool_or("rope_interleave", true)
                         ? RopePairing::kInterleaved
                         : RopePairing::kHalfSplit;
    if (m.rope.type != RopeType::kDefault && m.rope.mscale_all_dim != 0.0) {
      double s = yarn_get_mscale(m.rope.factor, m.rope.mscale_all_dim);
      m.attention.softmax_scale *= s * s;
    }
  } else {
    m.rope.rotary_dim = static_cast<int>(m.attention.head_dim * m.rope.partial_rotary_factor);
    m.rope.pairing = RopePairing::kHalfSplit;
  }
  if (m.rope.rotary_dim <= 0 || m.rope.rotary_dim % 2 != 0)
    throw_user_error(source_name, ": the rotary width (", m.rope.rotary_dim, ") must be a positive even number; "
                     "check head_dim / qk_rope_head_dim / partial_rotary_factor.");

  m.quant = parse_quant_config(c);
  m.dtype = parse_dtype(c);
  if (m.family == ModelFamily::kDeepseekV3) {
    m.num_mtp_layers = static_cast<int>(c.get_int("num_nextn_predict_layers").value_or(c.int_or("num_mtp_layers", 0)));
    if (m.num_mtp_layers < 0) c.fail("num_nextn_predict_layers", "expected >= 0.");
  }
  return m;
}

ModelConfig load_model_config(const std::filesystem::path& model_dir_or_config) {
  std::filesystem::path path = model_dir_or_config;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) path /= "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw_user_error(path.string(), ": cannot open the model config. Give a Hugging Face model directory "
                     "(with config.json) or the path of a config.json.");
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw_user_error(path.string(), ": not valid JSON (", e.what(), "). Fix or re-download the file.");
  }
  return parse_model_config(json, path.string());
}

}  // namespace refinery::model
