#pragma once
// The CUDA backend (DESIGN §1): the Backend interface on one NVIDIA GPU. Declared here without any
// CUDA header so that callers compile in every build; a build without CUDA links
// cuda_backend_nocuda.cpp, whose make_cuda_backend throws a user error.

#include <memory>

#include "engine/backend/backend.hpp"

namespace refinery::backend {

// A backend whose tensors live on CUDA device `device_index` (made current on this thread), with
// activations in `activations` (bf16, the default and what the engine runs; or f32, which the op
// tests use to compare with the CPU backend without rounding).
// Throws a user error when this build has no CUDA backend or the device does not exist.
std::shared_ptr<Backend> make_cuda_backend(int device_index = 0,
                                           DType activations = DType::kBF16);

}  // namespace refinery::backend
