// measure_throughput: timed greedy generation from a seeded random prompt (see throughput.hpp).
#include "engine/eval/throughput.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <random>
#include <vector>

#include "engine/core/device_memory.hpp"
#include "engine/core/error.hpp"
#include "engine/model/generate.hpp"

namespace refinery::eval {

namespace {

int64_t host_peak_resident_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

std::vector<int32_t> random_prompt(int64_t tokens, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (auto& id : ids) id = pick(rng);
  return ids;
}

model::GenerationResult timed_generation(model::Transformer& model, int64_t prompt_tokens,
                                         int64_t new_tokens, uint64_t seed) {
  model::GenerationOptions g;
  g.max_new_tokens = new_tokens;
  g.temperature = 0.0;  // greedy, no stop ids: exactly new_tokens steps
  const auto prompt = random_prompt(prompt_tokens, model.config().vocab_size, seed);
  return model::generate(model, prompt, g);
}

}  // namespace

ThroughputResult measure_throughput(model::Transformer& model, const ThroughputOptions& options) {
  const auto& config = model.config();
  if (options.prefill_tokens < 1 || options.decode_tokens < 1)
    throw_user_error("--prefill-tokens and --decode-tokens must be at least 1 (got ",
                     options.prefill_tokens, " and ", options.decode_tokens, ")");
  if (config.max_position_embeddings > 0 &&
      options.prefill_tokens + options.decode_tokens > config.max_position_embeddings)
    throw_user_error("--prefill-tokens ", options.prefill_tokens, " + --decode-tokens ",
                     options.decode_tokens, " exceeds the model's max_position_embeddings (",
                     config.max_position_embeddings, "); lower them");
  const bool cuda = model.backend().device() == Device::kCUDA;

  // Warm-up: weights reach the GPU and kernels load on first use.
  timed_generation(model, std::min<int64_t>(options.prefill_tokens, 16), 2, options.seed + 1);
  if (cuda) device_reset_peak_bytes();

  // The decode steps counted are those after the first new token (generate's decode_seconds);
  // ask for one more so that exactly decode_tokens steps are timed.
  const auto r = timed_generation(model, options.prefill_tokens, options.decode_tokens + 1,
                                  options.seed);
  ThroughputResult out;
  out.prefill_tokens = r.prompt_tokens;
  out.decode_tokens = static_cast<int64_t>(r.tokens.size()) - 1;
  out.prefill_seconds = r.prefill_seconds;
  out.decode_seconds = r.decode_seconds;
  out.prefill_tokens_per_s = out.prefill_tokens / std::max(r.prefill_seconds, 1e-9);
  out.decode_tokens_per_s = out.decode_tokens / std::max(r.decode_seconds, 1e-9);
  out.peak_memory_bytes =
      cuda ? static_cast<int64_t>(device_peak_bytes()) : host_peak_resident_bytes();
  return out;
}

}  // namespace refinery::eval
