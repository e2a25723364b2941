// rope_backward: the forward rotates each pair (a, b) at position p by the angle θ,
//   y_a = x_a·c − x_b·s,  y_b = x_b·c + x_a·s   (c, s from the table, times the attention factor),
// a linear map R; its gradient is Rᵀ: dx_a += dy_a·c + dy_b·s, dx_b += dy_b·c − dy_a·s. Pairs and
// the rotated span [offset, offset + rotary_dim) are those of rope.cpp; the other dims pass dy.
#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

void CpuBackend::rope_backward(const Tensor& dy, const RopeTable& table, int64_t first_position,
                               int64_t offset, Tensor& dx) {
  if (!dx.defined()) return;
  const RopeSizes sizes = check_rope(Device::kCPU, dy, table, first_position, offset, dx);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, d = sizes.d;
  const int64_t half = sizes.half;
  const float* pdy = dy.data<float>();
  float* pdx = dx.mutable_data<float>();
  const float* cos_table = table.cos.data<float>();
  const float* sin_table = table.sin.data<float>();
  const bool interleaved = table.pairing == model::RopePairing::kInterleaved;
#pragma omp parallel for if (t_count * heads * d > (1 << 15))
  for (int64_t t = 0; t < t_count; ++t) {
    const float* c = cos_table + (first_position + t) * half;
    const float* s = sin_table + (first_position + t) * half;
    for (int64_t h = 0; h < heads; ++h) {
      const float* gi = pdy + (t * heads + h) * d;
      float* xi = pdx + (t * heads + h) * d;
      for (int64_t i = 0; i < offset; ++i) xi[i] += gi[i];
      // From the end of the last pair (an odd rotary_dim leaves its last dim unrotated).
      for (int64_t i = offset + 2 * half; i < d; ++i) xi[i] += gi[i];
      const float* gr = gi + offset;
      float* xr = xi + offset;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        const float g0 = gr[a], g1 = gr[b];
        xr[a] += g0 * c[i] + g1 * s[i];
        xr[b] += g1 * c[i] - g0 * s[i];
      }
    }
  }
}

}  // namespace refinery::backend::cpu
