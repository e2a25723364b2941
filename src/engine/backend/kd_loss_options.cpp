// Validation of the KD loss options (user errors), shared by the backends and src/distill.
#include "engine/backend/kd_loss_options.hpp"

#include <cmath>

#include "engine/core/error.hpp"

namespace refinery::backend {

void validate_kd_loss_options(const KdLossOptions& o) {
  if (!(o.temperature > 0.0) || !std::isfinite(o.temperature))
    throw_user_error("distillation loss option temperature is ", o.temperature,
                     ", expected a finite value > 0 (1 = no softening; 2 is common)");
  if (!(o.beta > 0.0 && o.beta < 1.0))
    throw_user_error("distillation loss option beta (JSD mixing weight) is ", o.beta,
                     ", expected a value strictly between 0 and 1 (0.5 = symmetric JSD)");
  if (!(o.alpha > 0.0 && o.alpha < 1.0))
    throw_user_error("distillation loss option alpha (skew-KL mixing weight) is ", o.alpha,
                     ", expected a value strictly between 0 and 1 (0.1 is DistiLLM's default)");
  if (!(o.kd_weight >= 0.0) || !std::isfinite(o.kd_weight) || !(o.ce_weight >= 0.0) ||
      !std::isfinite(o.ce_weight))
    throw_user_error("distillation loss weights are kd_weight=", o.kd_weight,
                     " ce_weight=", o.ce_weight, ", expected finite values >= 0");
  if (o.kd_weight == 0.0 && o.ce_weight == 0.0)
    throw_user_error(
        "distillation loss weights kd_weight and ce_weight are both 0: the loss would be "
        "constant; set kd_weight (e.g. 1) and/or ce_weight");
}

}  // namespace refinery::backend
