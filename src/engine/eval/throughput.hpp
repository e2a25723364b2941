#pragma once
// Prefill and decode speed of a model on its backend (`refine bench`, the recipe report).
//
// Prefill: one forward of `prefill_tokens` prompt tokens; decode: `decode_tokens` greedy steps
// through the KV cache after it (batch 1). The prompt is seeded random token ids, so the numbers
// depend only on the model's shapes and the backend. One short warm-up generation runs first
// (the CUDA backend uploads weights and loads kernels lazily on first use).

#include <cstdint>

#include "engine/model/transformer.hpp"

namespace refinery::eval {

struct ThroughputOptions {
  int64_t prefill_tokens = 512;
  int64_t decode_tokens = 64;
  uint64_t seed = 0;
};

struct ThroughputResult {
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;
  double prefill_tokens_per_s = 0.0;
  double decode_tokens_per_s = 0.0;
  // CUDA: the device pool's high-water mark during the measured run; CPU: the process's peak
  // resident set (includes everything loaded before, e.g. the memory-mapped weights touched).
  int64_t peak_memory_bytes = 0;
};

// User error when prefill_tokens + decode_tokens exceeds the model's max_position_embeddings or
// either is < 1.
ThroughputResult measure_throughput(model::Transformer& model, const ThroughputOptions& options);

}  // namespace refinery::eval
