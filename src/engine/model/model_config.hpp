#pragma once
// One normalized description of a decoder-only model, parsed from a Hugging Face config.json of
// any supported family (DESIGN §3, "Families"). Field semantics are those of transformers; where
// 4.x and 5.x differ in names or defaults both are read (see model_config.cpp for the per-family
// table). The engine builds the model from this struct only, never from the JSON.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/core/dtype.hpp"
#include "engine/model/quant_config.hpp"
#include "engine/model/rope_config.hpp"

namespace refinery::model {

enum class ModelFamily { kLlama, kMistral, kQwen2, kQwen3, kMixtral, kQwen2Moe, kQwen3Moe, kDeepseekV2, kDeepseekV3 };

// The `model_type` strings we accept, in the order above.
const std::vector<std::string>& supported_model_types();
const char* model_type_name(ModelFamily family);

enum class AttentionKind {
  kGqa,  // MHA / GQA / MQA: q [heads*head_dim], k, v [kv_heads*head_dim]; MHA when kv_heads == heads
  kMla,  // DeepSeek multi-head latent attention
};

struct AttentionConfig {
  AttentionKind kind = AttentionKind::kGqa;
  int num_heads = 0;
  int num_kv_heads = 0;  // MLA: == num_heads (every head gets its own K/V from the latent)
  // GQA: the q/k/v per-head width. MLA: the q/k head width qk_nope_head_dim + qk_rope_head_dim.
  int head_dim = 0;
  bool qkv_bias = false;  // bias on q_proj, k_proj, v_proj (qwen2 always; llama/qwen3 attention_bias)
  bool o_bias = false;    // bias on o_proj (llama/qwen3/deepseek attention_bias)
  bool qk_norm = false;   // qwen3: RMSNorm over head_dim on every q and k head, before RoPE

  // MLA only. q: q_lora_rank ? q_b(norm(q_a(x))) : q_proj(x), [heads * (nope + rope)].
  // kv_a_proj_with_mqa: [kv_lora_rank + qk_rope_head_dim]; kv_b_proj: [heads * (nope + v)].
  std::optional<int> q_lora_rank;  // nullopt: no q LoRA (DeepSeek-V2-Lite)
  int kv_lora_rank = 0;
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;
  int v_head_dim = 0;
  bool lora_a_bias = false;  // MLA attention_bias: bias on q_a_proj and kv_a_proj_with_mqa

  // Multiplier of q.k: head_dim^-0.5, times yarn_get_mscale(factor, mscale_all_dim)^2 for MLA with
  // scaled RoPE and a non-zero mscale_all_dim (transformers' deepseek yarn_apply_mscale).
  double softmax_scale = 1.0;

  int value_head_dim() const { return kind == AttentionKind::kMla ? v_head_dim : head_dim; }
};

enum class RouterScoring { kSoftmax, kSigmoid };
enum class TopkMethod {
  kGreedy,              // top-k over all experts
  kGroupLimitedGreedy,  // DeepSeek-V2: keep topk_group groups by their max score, then top-k
  kNoauxTc,             // DeepSeek-V3: groups by the sum of their top-2 (score + correction bias)
};

struct MoeConfig {
  int num_experts = 0;         // routed experts (n_routed_experts / num_local_experts / num_experts)
  int experts_per_token = 0;   // num_experts_per_tok
  int expert_intermediate_size = 0;  // one routed expert's SwiGLU width
  RouterScoring scoring = RouterScoring::kSoftmax;
  TopkMethod topk_method = TopkMethod::kGreedy;
  bool score_correction_bias = false;  // `gate.e_score_correction_bias` [num_experts] (noaux_tc)
  int n_group = 1;
  int topk_group = 1;
  bool norm_topk_prob = false;  // renormalize the chosen weights to sum 1 (mixtral: always)
  double routed_scaling_factor = 1.0;

  // Shared experts: one dense SwiGLU added to every token's output.
  //  deepseek: `mlp.shared_experts`, width moe_intermediate_size * n_shared_experts;
  //  qwen2_moe: `mlp.shared_expert`, width shared_expert_intermediate_size, scaled by
  //  sigmoid(`mlp.shared_expert_gate` [1, hidden] . x).
  int num_shared_experts = 0;
  int shared_intermediate_size = 0;  // total width of the shared MLP
  bool shared_expert_gate = false;

  // Which layers are MoE (all must hold):  layer >= first_k_dense_replace,
  // layer % moe_layer_freq == 0 (DeepSeek), (layer + 1) % decoder_sparse_step == 0 (Qwen),
  // layer not in mlp_only_layers (Qwen). Other layers use the dense MLP (intermediate_size).
  int first_k_dense_replace = 0;
  int moe_layer_freq = 1;
  int decoder_sparse_step = 1;
  std::vector<int> mlp_only_layers;
};

struct ModelConfig {
  std::string source;  // the file it came from, for messages
  ModelFamily family = ModelFamily::kLlama;
  std::string model_type;

  int vocab_size = 0;
  int hidden_size = 0;
  int num_layers = 0;          // num_hidden_layers (DeepSeek MTP layers are extra, see below)
  int intermediate_size = 0;   // dense SwiGLU width (mixtral: the expert width)
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool mlp_bias = false;       // llama / deepseek_v2 `mlp_bias` on gate/up/down
  std::optional<int> sliding_window;  // mistral/mixtral; nullopt = full attention

  AttentionConfig attention;
  std::optional<MoeConfig> moe;  // nullopt: every layer is dense
  RopeConfig rope;
  QuantConfig quant;
  std::optional<DType> dtype;    // `torch_dtype` (4.x) / `dtype` (5.x); nullopt when absent or "auto"
  // DeepSeek-V3 `num_nextn_predict_layers`: multi-token-prediction layers stored in the checkpoint as
  // model.layers.{num_layers}...; transformers does not build them.
  int num_mtp_layers = 0;

  bool is_moe() const { return moe.has_value(); }
  bool layer_is_moe(int layer) const;
  int num_moe_layers() const;
};

// Parses a config.json object. `source_name` (usually the file path) prefixes every error message.
ModelConfig parse_model_config(const nlohmann::json& config, const std::string& source_name);

// Reads `<dir>/config.json` when given a directory, else the file itself.
ModelConfig load_model_config(const std::filesystem::path& model_dir_or_config);

}  // namespace refinery::model
