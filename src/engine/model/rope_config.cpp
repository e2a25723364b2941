#include "engine/model/rope_config.hpp"

#include <cmath>

#include "engine/core/error.hpp"
#include "engine/model/config_json.hpp"

namespace refinery::model {

const char* rope_type_name(RopeType type) {
  switch (type) {
    case RopeType::kDefault: return "default";
    case RopeType::kLinear: return "linear";
    case RopeType::kLlama3: return "llama3";
    case RopeType::kYarn: return "yarn";
  }
  return "?";
}

double yarn_get_mscale(double scale, double mscale) {
  if (scale <= 1.0) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

RopeConfig parse_rope_config(const ConfigJson& config, double default_theta, int max_position_embeddings) {
  RopeConfig rope;
  rope.original_max_position_embeddings = max_position_embeddings;

  // 5.x keeps everything in `rope_parameters`; 4.x has `rope_theta` at the top and the scaling in
  // `rope_scaling`. A 5.x file may still carry a stale top-level rope_theta: rope_parameters wins.
  std::optional<ConfigJson> params = config.get_object("rope_parameters");
  std::string params_key = "rope_parameters";
  if (!params) {
    params = config.get_object("rope_scaling");
    params_key = "rope_scaling";
  }
  rope.theta = config.number_or("rope_theta", default_theta);
  rope.partial_rotary_factor = config.number_or("partial_rotary_factor", 1.0);
  if (!params) return rope;

  const ConfigJson& p = *params;
  if (p.has("rope_theta")) rope.theta = *p.get_number("rope_theta");
  if (p.has("partial_rotary_factor")) rope.partial_rotary_factor = *p.get_number("partial_rotary_factor");
  if (!(rope.partial_rotary_factor > 0.0 && rope.partial_rotary_factor <= 1.0))
    p.fail("partial_rotary_factor", str("expected a value in (0, 1], found ", rope.partial_rotary_factor));
  if (!(rope.theta > 0.0)) p.fail("rope_theta", str("expected a positive base, found ", rope.theta));

  // `rope_type` (newer) or `type` (older 4.x and DeepSeek's own files); rope_type wins.
  std::string type = p.get_string("rope_type").value_or(p.get_string("type").value_or("default"));
  const std::string type_key = p.has("rope_type") ? "rope_type" : "type";
  if (type == "default") {
    rope.type = RopeType::kDefault;
  } else if (type == "linear") {
    rope.type = RopeType::kLinear;
  } else if (type == "llama3") {
    rope.type = RopeType::kLlama3;
  } else if (type == "yarn") {
    rope.type = RopeType::kYarn;
  } else if (type == "dynamic") {
    p.fail(type_key, "RoPE type \"dynamic\" (dynamic NTK scaling) is not supported: its frequencies change "
                     "with the sequence length. Supported: default, linear, llama3, yarn. Use a checkpoint "
                     "without dynamic scaling or remove `" + params_key + "` to run at the base context.");
  } else {
    p.fail(type_key, str("RoPE type \"", type, "\" is not supported. Supported: default, linear, llama3, yarn."));
  }
  if (rope.type == RopeType::kDefault) return rope;

  rope.factor = p.require_number("factor", "the RoPE scaling factor");
  if (!(rope.factor > 0.0)) p.fail("factor", str("expected a positive scaling factor, found ", rope.factor));
  if (p.has("original_max_position_embeddings")) {
    int64_t orig = *p.get_int("original_max_position_embeddings");
    if (orig <= 0) p.fail("original_max_position_embeddings", str("expected a positive length, found ", orig));
    rope.original_max_position_embeddings = static_cast<int>(orig);
  }

  if (rope.type == RopeType::kLlama3) {
    rope.low_freq_factor = p.require_number("low_freq_factor", "llama3 RoPE: wavelengths above "
                                            "original_max_position_embeddings / low_freq_factor are divided by factor");
    rope.high_freq_factor = p.require_number("high_freq_factor", "llama3 RoPE: wavelengths below "
                                             "original_max_position_embeddings / high_freq_factor are kept");
    if (!(rope.high_freq_factor > rope.low_freq_factor))
      p.fail("high_freq_factor", str("llama3 RoPE needs high_freq_factor > low_freq_factor, found ",
                                     rope.high_freq_factor, " <= ", rope.low_freq_factor));
  } else if (rope.type == RopeType::kYarn) {
    // transformers: `rope_parameters.get("beta_fast") or 32`, so 0 also means the default.
    double beta_fast = p.number_or("beta_fast", 0.0);
    double beta_slow = p.number_or("beta_slow", 0.0);
    rope.beta_fast = beta_fast != 0.0 ? beta_fast : 32.0;
    rope.beta_slow = beta_slow != 0.0 ? beta_slow : 1.0;
    rope.mscale = p.number_or("mscale", 0.0);
    rope.mscale_all_dim = p.number_or("mscale_all_dim", 0.0);
    rope.truncate = p.bool_or("truncate", true);
    if (p.has("attention_factor")) {
      rope.attention_factor = *p.get_number("attention_factor");
    } else if (rope.mscale != 0.0 && rope.mscale_all_dim != 0.0) {
      rope.attention_factor =
          yarn_get_mscale(rope.factor, rope.mscale) / yarn_get_mscale(rope.factor, rope.mscale_all_dim);
    } else {
      rope.attention_factor = yarn_get_mscale(rope.factor, 1.0);
    }
  }
  return rope;
}

}  // namespace refinery::model
