#pragma once
// Rotary position embedding tables, precomputed on the host from a RopeConfig (every variant:
// default, linear, llama3, yarn) exactly as transformers' ROPE_INIT_FUNCTIONS compute them
// (exponents and angles in f32), so that a backend's rope() is a plain table lookup.

#include <cstdint>
#include <vector>

#include "engine/core/tensor.hpp"
#include "engine/model/rope_config.hpp"

namespace refinery::backend {

// inv_freq' of the rope type, [rotary_dim / 2], rounded to f32 like transformers' buffer.
std::vector<float> rope_inv_freq(const model::RopeConfig& rope);

struct RopeTable {
  Tensor cos;  // f32 [positions, rotary_dim / 2], times the attention factor
  Tensor sin;  // f32 [positions, rotary_dim / 2], times the attention factor
  int rotary_dim = 0;
  model::RopePairing pairing = model::RopePairing::kHalfSplit;

  int64_t positions() const { return cos.defined() ? cos.size(0) : 0; }
};

// Tables for positions [0, positions) on the CPU. A backend that lives elsewhere copies them.
RopeTable make_rope_table(const model::RopeConfig& rope, int64_t positions);

}  // namespace refinery::backend
