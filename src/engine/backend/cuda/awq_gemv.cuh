#pragma once
// Internal to the AWQ GEMV's .cu files (awq_linear.cu: the base kernel; awq_gemv.cu: the variants
// and the variant dispatch). Not for g++-compiled code: see awq_linear.hpp for the public API.
#include <cstdint>

#include "engine/backend/cuda/awq_linear.hpp"

namespace refinery::backend::cuda {

// Launches the base GEMV kernel (variant 0, awq_linear.cu's header comment) after the argument
// checks of awq_gemv_bf16 have passed.
void awq_gemv_base_launch(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                          bool y_f32, void* stream);
// Launches variant `variant` (awq_gemv.cu) and returns true, or returns false without launching
// when the variant falls back to base for this matrix and row count (or is base itself).
bool awq_gemv_v2_launch(const AwqDeviceMatrix& w, const void* x, int64_t rows, void* y,
                        bool y_f32, int variant, void* stream);

}  // namespace refinery::backend::cuda
