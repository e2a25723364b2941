#pragma once
// Pointer alignment checks of the CUDA launchers (16-byte vector loads/stores, cp.async).
#include <cstdint>

namespace refinery::backend::cuda {

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace refinery::backend::cuda
