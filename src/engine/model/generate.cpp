#include "engine/model/generate.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

namespace refinery::model {

int32_t sample_token(std::span<const float> logits, double temperature, double top_p,
                     std::mt19937_64& rng) {
  const std::size_t n = logits.size();
  if (n == 0) throw_internal_error("sample_token: empty logits");
  if (temperature <= 0.0)  // greedy; ties to the lowest id like torch.argmax
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  if (!(top_p > 0.0 && top_p <= 1.0)) throw_user_error("top-p must be in (0, 1], found ", top_p);
  const double mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(n);
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) sum += p[i] = std::exp((logits[i] - mx) / temperature);
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  // Nucleus: the shortest prefix whose mass reaches top_p (at least one token).
  std::size_t keep = 0;
  double mass = 0.0;
  while (keep < n && (keep == 0 || mass < top_p * sum)) mass += p[order[keep++]];
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * mass;  // uniform in [0, mass)
  double acc = 0.0;
  for (std::size_t i = 0; i < keep; ++i) {
    acc += p[order[i]];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

GenerationResult generate(Transformer& model, std::span<const int32_t> prompt,
                          const GenerationOptions& options,
                          const std::function<void(int32_t)>& on_token) {
  if (prompt.empty()) throw_user_error("generation needs a prompt of at least one token");
  if (options.max_new_tokens < 0)
    throw_user_error("max new tokens must be >= 0, found ", options.max_new_tokens);
  using Clock = std::chrono::steady_clock;
  GenerationResult result;
  result.prompt_tokens = static_cast<int64_t>(prompt.size());
  if (options.max_new_tokens == 0) return result;
  std::mt19937_64 rng(options.seed);
  KvCache cache = model.make_cache(result.prompt_tokens + options.max_new_tokens);
  backend::Backend& be = model.backend();
  const int64_t hidden_size = model.config().hidden_size;

  auto next_token = [&](const Tensor& hidden) {
    // Only the last position's logits are needed.
    const Tensor last = hidden.slice(hidden.size(0) - 1, hidden.size(0)).view({1, hidden_size});
    const Tensor logits = be.download(model.logits(last));
    return sample_token({logits.data<float>(), static_cast<std::size_t>(logits.numel())},
                        options.temperature, options.top_p, rng);
  };

  auto t0 = Clock::now();
  int32_t token = next_token(model.forward_hidden(prompt, cache));
  result.prefill_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  while (true) {
    result.tokens.push_back(token);
    if (on_token) on_token(token);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) !=
        options.stop_ids.end()) {
      result.stopped = true;
      break;
    }
    if (static_cast<int64_t>(result.tokens.size()) >= options.max_new_tokens) break;
    token = next_token(model.forward_hidden(std::span<const int32_t>(&token, 1), cache));
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace refinery::model
