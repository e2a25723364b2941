// RoPE application: a table lookup per (position, pair). Half-split pairs (i, i + r/2), interleaved
// pairs (2i, 2i + 1); dims outside [offset, offset + r) pass through (MLA nope part, partial
// rotary). The backward is the same rotation by −θ (Rᵀ of the linear map R), accumulated.
#include <cstring>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {

// Per pair (a, b) at position p = first_position + t % sizes.segment:
// out_a = in_a·c − in_b·(σ·s), out_b = in_b·c + in_a·(σ·s) with
// σ = sin_sign (+1: the forward rotation R, −1: its transpose). `accumulate`: out += instead of
// out = (for the backward); the dims outside the rotated span are copied or added likewise.
// in may alias out when not accumulating.
void rotate(const float* in, float* out, const RopeTable& table, const RopeSizes& sizes,
            int64_t first_position, int64_t offset, float sin_sign, bool accumulate) {
  const int64_t t_count = sizes.t_count, heads = sizes.heads, d = sizes.d, half = sizes.half;
  const float* cos_table = table.cos.data<float>();
  const float* sin_table = table.sin.data<float>();
  const bool interleaved = table.pairing == model::RopePairing::kInterleaved;
#pragma omp parallel for if (t_count * heads * d > (1 << 15))
  for (int64_t t = 0; t < t_count; ++t) {
    const int64_t p = first_position + t % sizes.segment;
    const float* c = cos_table + p * half;
    const float* s = sin_table + p * half;
    for (int64_t h = 0; h < heads; ++h) {
      const float* xi = in + (t * heads + h) * d;
      float* yi = out + (t * heads + h) * d;
      if (accumulate) {
        for (int64_t i = 0; i < offset; ++i) yi[i] += xi[i];
        // From the end of the last pair (an odd rotary_dim leaves its last dim unrotated).
        for (int64_t i = offset + 2 * half; i < d; ++i) yi[i] += xi[i];
      } else if (xi != yi) {
        std::memcpy(yi, xi, static_cast<std::size_t>(d) * sizeof(float));
      }
      const float* xr = xi + offset;
      float* yr = yi + offset;
      for (int64_t i = 0; i < half; ++i) {
        const int64_t a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
        const float x0 = xr[a], x1 = xr[b], si = sin_sign * s[i];
        const float r0 = x0 * c[i] - x1 * si, r1 = x1 * c[i] + x0 * si;
        if (accumulate) {
          yr[a] += r0;
          yr[b] += r1;
        } else {
          yr[a] = r0;
          yr[b] = r1;
        }
      }
    }
  }
}

}  // namespace

void CpuBackend::rope(const Tensor& x, const RopeTable& table, int64_t first_position,
                      int64_t offset, Tensor& y, int64_t segment_length) {
  const RopeSizes sizes =
      check_rope(Device::kCPU, x, table, first_position, offset, y, segment_length);
  rotate(x.data<float>(), y.mutable_data<float>(), table, sizes, first_position, offset, 1.0f,
         false);
}

void CpuBackend::rope_backward(const Tensor& dy, const RopeTable& table, int64_t first_position,
                               int64_t offset, Tensor& dx, GradWrite write,
                               int64_t segment_length) {
  if (!dx.defined()) return;
  const RopeSizes sizes =
      check_rope(Device::kCPU, dy, table, first_position, offset, dx, segment_length);
  rotate(dy.data<float>(), dx.mutable_data<float>(), table, sizes, first_position, offset, -1.0f,
         write == GradWrite::kAdd);
}

}  // namespace refinery::backend::cpu
