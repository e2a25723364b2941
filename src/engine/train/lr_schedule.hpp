#pragma once
// Learning-rate schedule: linear warmup, then a half cosine down to a floor.
//
// Defined exactly as transformers' get_cosine_schedule_with_warmup (num_cycles 0.5) with its
// min_lr_rate term, which is what a transformers Trainer uses for lr_scheduler_type "cosine":
//
//   step < warmup:  lr = peak * step / max(1, warmup)                     (step 0 -> lr 0)
//   otherwise:      progress = (step - warmup) / max(1, total - warmup)
//                   lr = peak * max(0, c * (1 - min_lr_ratio) + min_lr_ratio),
//                   c = 0.5 * (1 + cos(pi * progress))
//
// so lr(warmup) = peak and lr(total) = min_lr_ratio * peak. `step` counts optimizer steps already
// taken: the first update uses lr(0) (= 0 when warmup > 0), as with torch's LambdaLR.
// One deliberate difference: past `total_steps` transformers' cosine climbs back up (progress > 1);
// here the schedule holds its final value, min_lr_ratio * peak.

#include <cstdint>

namespace refinery::train {

struct LrSchedule {
  double peak_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;
  double min_lr_ratio = 0.1;  // floor as a fraction of peak_lr (transformers' min_lr_rate)

  // Throws a user error naming the field for a negative or non-finite peak, negative step counts,
  // warmup_steps > total_steps, or a ratio outside [0, 1].
  void validate() const;
  // The learning rate for the update that follows `step` completed steps (step >= 0; validates).
  double lr(int64_t step) const;
};

}  // namespace refinery::train
