#pragma once
// Autoregressive generation over a Transformer: one prefill of the prompt, then one decode step per
// new token through the KV cache. Greedy when temperature <= 0, else sampling from softmax(logits /
// temperature) restricted to the top-p nucleus, with a seeded generator (same seed, same tokens).

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "engine/model/transformer.hpp"

namespace refinery::model {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // <= 0: greedy (argmax)
  double top_p = 1.0;  // (0, 1]: keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // EOS ids: generation ends after producing one (it is included)
};

struct GenerationResult {
  std::vector<int32_t> tokens;  // the new tokens only
  bool stopped = false;         // ended on a stop id (not max_new_tokens)
  int64_t prompt_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // all decode steps (tokens after the first)
};

// Picks the next token from one row of logits [vocab].
int32_t sample_token(std::span<const float> logits, double temperature, double top_p,
                     std::mt19937_64& rng);

// `on_token` (optional) sees every new token as soon as it is chosen (streaming output).
GenerationResult generate(Transformer& model, std::span<const int32_t> prompt,
                          const GenerationOptions& options,
                          const std::function<void(int32_t)>& on_token = {});

}  // namespace refinery::model
