#pragma once
// The knowledge-distillation loss a backend's kd_loss op computes (the math is documented in
// src/distill/losses.hpp, whose CPU reference functions use these same options). Declared at the
// backend layer, like RouterSpec, so that the backends do not depend on src/distill.

namespace refinery::backend {

enum class Divergence { kForwardKl, kReverseKl, kJsd, kSkewKl };

struct KdLossOptions {
  Divergence divergence = Divergence::kForwardKl;
  double temperature = 1.0;  // T > 0, applied to both teacher and student for the KD term
  double beta = 0.5;         // JSD mixing weight, in (0, 1)
  double alpha = 0.1;        // skew-KL mixing weight, in (0, 1)
  double kd_weight = 1.0;    // >= 0
  double ce_weight = 0.0;    // >= 0; not both weights zero
};

// Throws a user error for temperature <= 0 or not finite, beta or alpha outside (0, 1), negative
// or non-finite weights, or both weights zero (distill::validate_options is this).
void validate_kd_loss_options(const KdLossOptions& options);

}  // namespace refinery::backend
