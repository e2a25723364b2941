#pragma once
// Gradient clipping by global L2 norm, as torch.nn.utils.clip_grad_norm_ (norm_type 2).
//
// The norm is accumulated in double, in fixed-size chunks whose partial sums are added in order, so
// the result does not depend on the number of OpenMP threads (a resumed run reproduces it exactly).

#include <cstdint>
#include <utility>
#include <vector>

namespace refinery::train {

// sqrt(sum over all tensors of sum(g^2)). Each entry: (data, element count); count 0 is allowed.
// NaN or inf anywhere gives a non-finite result.
double global_grad_norm(const std::vector<std::pair<const float*, int64_t>>& grads);

// Scales every gradient by min(1, max_norm / (norm + 1e-6)) (torch's coefficient) and returns the
// norm measured before scaling. When the coefficient is 1 the gradients are left untouched. When
// the norm is not finite the gradients are also left untouched (torch would multiply them by NaN):
// the caller sees the non-finite norm and should skip the step. max_norm must be > 0 (user error).
double clip_grad_norm(std::vector<std::pair<float*, int64_t>>& grads, double max_norm);

}  // namespace refinery::train
