// RoPE tables from a RopeConfig (FAMILY_NOTES §4, transformers' modeling_rope_utils.py). Arithmetic
// is done in f32 where transformers does it in f32 (exponents, inv_freq, angles) so that the tables
// agree with its buffers to the last bit or one ulp.
#include "engine/backend/rope_table.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace refinery::backend {

using model::RopeConfig;
using model::RopeType;

std::vector<float> rope_inv_freq(const RopeConfig& rope) {
  const int dim = rope.rotary_dim;
  if (dim <= 0 || dim % 2 != 0)
    throw_user_error("rotary width ", dim,
                     " must be a positive even number (head_dim or qk_rope_head_dim "
                     "times partial_rotary_factor)");
  const int half = dim / 2;
  // pos_freqs[i] = theta ^ (2i / dim), exponent in f32 as transformers computes it.
  std::vector<float> pos_freq(half), inv(half);
  for (int i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(dim);
    pos_freq[i] = static_cast<float>(
        std::pow(static_cast<double>(static_cast<float>(rope.theta)), double(e)));
    inv[i] = 1.0f / pos_freq[i];
  }
  const float factor = static_cast<float>(rope.factor);
  switch (rope.type) {
    case RopeType::kDefault:
      return inv;
    case RopeType::kLinear:
      for (float& f : inv) f /= factor;
      return inv;
    case RopeType::kLlama3: {
      const float orig = static_cast<float>(rope.original_max_position_embeddings);
      const float lo = static_cast<float>(rope.low_freq_factor),
                  hi = static_cast<float>(rope.high_freq_factor);
      const float lo_wl = orig / lo, hi_wl = orig / hi;
      for (float& f : inv) {
        const float wl = 2.0f * std::numbers::pi_v<float> / f;
        const float scaled = wl > lo_wl ? f / factor : f;
        if (wl < hi_wl || wl > lo_wl) {
          f = scaled;
        } else {  // medium frequencies: blend
          const float s = (orig / wl - lo) / (hi - lo);
          f = (1.0f - s) * scaled / factor + s * scaled;
        }
      }
      return inv;
    }
    case RopeType::kYarn: {
      const double orig = rope.original_max_position_embeddings;
      const double base = rope.theta;
      auto correction_dim = [&](double rotations) {
        return dim * std::log(orig / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
      };
      double lo = correction_dim(rope.beta_fast), hi = correction_dim(rope.beta_slow);
      if (rope.truncate) {
        lo = std::floor(lo);
        hi = std::ceil(hi);
      }
      lo = std::max(lo, 0.0);
      hi = std::min(hi, static_cast<double>(dim - 1));
      if (lo == hi) hi += 0.001;
      for (int i = 0; i < half; ++i) {
        const float ramp = std::clamp(static_cast<float>((i - lo) / (hi - lo)), 0.0f, 1.0f);
        const float extrapolation = 1.0f - ramp;
        const float interp = 1.0f / (factor * pos_freq[i]);
        inv[i] = interp * (1.0f - extrapolation) + inv[i] * extrapolation;
      }
      return inv;
    }
  }
  throw_internal_error("unknown rope type");
}

RopeTable make_rope_table(const RopeConfig& rope, int64_t positions) {
  const std::vector<float> inv = rope_inv_freq(rope);
  const int64_t half = static_cast<int64_t>(inv.size());
  RopeTable table;
  table.rotary_dim = rope.rotary_dim;
  table.pairing = rope.pairing;
  table.cos = Tensor::empty(DType::kF32, {positions, half});
  table.sin = Tensor::empty(DType::kF32, {positions, half});
  float* c = table.cos.mutable_data<float>();
  float* s = table.sin.mutable_data<float>();
  const float af = static_cast<float>(rope.attention_factor);
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv[i];  // f32 product, as the HF matmul
      c[p * half + i] = static_cast<float>(std::cos(static_cast<double>(angle))) * af;
      s[p * half + i] = static_cast<float>(std::sin(static_cast<double>(angle))) * af;
    }
  }
  return table;
}

}  // namespace refinery::backend
