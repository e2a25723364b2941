#include "engine/train/lr_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "engine/core/error.hpp"

namespace refinery::train {

void LrSchedule::validate() const {
  if (!std::isfinite(peak_lr) || peak_lr < 0.0)
    throw_user_error("learning-rate schedule: peak_lr must be a finite number >= 0, found ", peak_lr,
                     "; set the learning rate to a positive value such as 1e-4");
  if (warmup_steps < 0)
    throw_user_error("learning-rate schedule: warmup_steps must be >= 0, found ", warmup_steps);
  if (total_steps < 0) throw_user_error("learning-rate schedule: total_steps must be >= 0, found ", total_steps);
  if (warmup_steps > total_steps)
    throw_user_error("learning-rate schedule: warmup_steps (", warmup_steps, ") exceeds total_steps (",
                     total_steps, "); use fewer warmup steps or train for more steps");
  if (!(min_lr_ratio >= 0.0 && min_lr_ratio <= 1.0))
    throw_user_error("learning-rate schedule: min_lr_ratio must lie in [0, 1], found ", min_lr_ratio,
                     " (it is the final learning rate as a fraction of the peak, e.g. 0.1)");
}

double LrSchedule::lr(int64_t step) const {
  validate();
  if (step < 0) throw_user_error("learning-rate schedule: step must be >= 0, found ", step);
  // The operations and their order follow transformers' lambda, so that the values agree to the bit.
  if (step < warmup_steps)
    return peak_lr * (static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps)));
  const int64_t clamped = std::min(step, total_steps);  // hold the floor after the end (see header)
  const double progress = static_cast<double>(clamped - warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  double factor = 0.5 * (1.0 + std::cos(std::numbers::pi * 0.5 * 2.0 * progress));
  factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio;
  return peak_lr * std::max(0.0, factor);
}

}  // namespace refinery::train
