// RoPE application: a table lookup per (position, pair). Half-split pairs (i, i + r/2), interleaved
// pairs (2i, 2i + 1); dims outside [offset, offset + r) pass through (MLA nope part, partial
// rotary).
#include <cstring>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

void CpuBackend::rope(const Tensor& x, const RopeTable& table, int64_t first_position,
                      int64_t offset, Tensor& y) {
  const RopeSizes sizes = check_rope(Device::kCPU, x, table, first_position, offset, y);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, d = sizes.d;
  const int64_t half = sizes.half;
  const float* px = x.data<float>();
  float* py = y.mutable_data<float>();
  const float* cos_table = table.cos.data<float>();
  const float* sin_table = table.sin.data<float>();
  const bool interleaved = table.pairing == model::RopePairing::kInterleaved;
#pragma omp parallel for if (t_count * heads * d > (1 << 15))
  for (int64_t t = 0; t < t_count; ++t) {
    const float* c = cos_table + (first_position + t) * half;
    const float* s = sin_table + (first_position + t) * half;
    for (int64_t h = 0; h < heads; ++h) {
      const float* xi = px + (t * heads + h) * d;
      float* yi = py + (t * heads + h) * d;
      if (xi != yi) std::memcpy(yi, xi, static_cast<std::size_t>(d) * sizeof(float));
      const float* xr = xi + offset;
      float* yr = yi + offset;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        const float x0 = xr[a], x1 = xr[b];
        yr[a] = x0 * c[i] - x1 * s[i];
        yr[b] = x1 * c[i] + x0 * s[i];
      }
    }
  }
}

}  // namespace refinery::backend::cpu
