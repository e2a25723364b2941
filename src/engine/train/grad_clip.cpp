#include "engine/train/grad_clip.hpp"

#include <cmath>

#include "engine/core/error.hpp"

namespace refinery::train {
namespace {

// Elements per partial sum. Fixed (not derived from the thread count) for reproducibility.
constexpr int64_t kChunk = 1 << 16;

double sum_of_squares(const float* data, int64_t count) {
  const int64_t chunks = (count + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<std::size_t>(chunks), 0.0);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kChunk;
    const int64_t end = std::min(count, begin + kChunk);
    double s = 0.0;
    for (int64_t i = begin; i < end; ++i) {
      const double v = data[i];
      s += v * v;
    }
    partial[static_cast<std::size_t>(c)] = s;
  }
  double total = 0.0;
  for (double s : partial) total += s;
  return total;
}

}  // namespace

double global_grad_norm(const std::vector<std::pair<const float*, int64_t>>& grads) {
  double total = 0.0;
  for (std::size_t i = 0; i < grads.size(); ++i) {
    const auto& [data, count] = grads[i];
    REFINERY_CHECK(count >= 0, "gradient ", i, " has a negative element count ", count);
    REFINERY_CHECK(count == 0 || data != nullptr, "gradient ", i, " is null but has ", count, " elements");
    total += sum_of_squares(data, count);
  }
  return std::sqrt(total);
}

double clip_grad_norm(std::vector<std::pair<float*, int64_t>>& grads, double max_norm) {
  if (!(max_norm > 0.0) || !std::isfinite(max_norm))
    throw_user_error("gradient clipping: max_grad_norm must be a finite number > 0, found ", max_norm,
                     "; use e.g. 1.0");
  std::vector<std::pair<const float*, int64_t>> views;
  views.reserve(grads.size());
  for (const auto& [data, count] : grads) views.emplace_back(data, count);
  const double norm = global_grad_norm(views);
  if (!std::isfinite(norm)) return norm;
  const double coefficient = max_norm / (norm + 1e-6);
  if (coefficient >= 1.0) return norm;
  // torch multiplies fp32 gradients by the coefficient held as fp32.
  const float scale = static_cast<float>(coefficient);
  for (auto& [data, count] : grads) {
#pragma omp parallel for schedule(static) if (count > kChunk)
    for (int64_t i = 0; i < count; ++i) data[i] *= scale;
  }
  return norm;
}

}  // namespace refinery::train
