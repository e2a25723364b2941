#pragma once
// Rotary position embedding settings, normalized from transformers 4.x (`rope_theta` +
// `rope_scaling` with `type` or `rope_type`) and 5.x (`rope_parameters`, which also holds
// rope_theta) config files.

#include <string>

namespace refinery::model {

class ConfigJson;

enum class RopeType { kDefault, kLinear, kLlama3, kYarn };

// How the rotated dimensions are paired.
//  kHalfSplit: HF `rotate_half`: dimension i pairs with i + rotary_dim/2 (Llama, Qwen, Mistral).
//  kInterleaved: dimension 2i pairs with 2i+1 (DeepSeek MLA's rope part as stored in HF checkpoints:
//    deepseek_v2 rotates complex pairs; deepseek_v3 with `rope_interleave` (default true) takes
//    x[0::2], x[1::2] as the pair halves). Frequencies are the same: pair i uses inv_freq[i].
enum class RopePairing { kHalfSplit, kInterleaved };

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  RopePairing pairing = RopePairing::kHalfSplit;
  int rotary_dim = 0;                 // dimensions rotated per head (head_dim * partial_rotary_factor)
  double partial_rotary_factor = 1.0;  // 5.x `partial_rotary_factor`; none of our families set it

  double factor = 1.0;  // linear, llama3, yarn
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3 and yarn: the pretraining context (defaults to max_position_embeddings, as in 5.x)
  int original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 0.0;          // 0 = absent
  double mscale_all_dim = 0.0;  // 0 = absent; DeepSeek multiplies the softmax scale by its mscale^2
  bool truncate = true;          // floor/ceil the correction range (5.x `truncate`, default true)
  // Multiplier on cos/sin. yarn: the config's `attention_factor`, else
  // get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim) when both are given, else
  // get_mscale(factor) with get_mscale(s, m) = s <= 1 ? 1 : 0.1 * m * ln(s) + 1. Others: 1.
  double attention_factor = 1.0;
};

const char* rope_type_name(RopeType type);

// yarn's get_mscale, shared by the attention-factor and the MLA softmax-scale rules.
double yarn_get_mscale(double scale, double mscale);

// Reads the rope settings of `config` (the top-level object). `default_theta` is the family's
// default when no rope_theta is given (1e6 for mixtral, 1e4 for the others).
RopeConfig parse_rope_config(const ConfigJson& config, double default_theta, int max_position_embeddings);

}  // namespace refinery::model
