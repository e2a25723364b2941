// group_fake_quantize on the GPU (backend.hpp; the math of src/quantize/group_quant.cpp): one
// warp per quantization group (row r, inputs [c0, c0 + group)), each lane holding group/32
// values (group = 32, 64 or 128). Min/max by warp shuffles; the fp16-rounded scale, zero and
// codes exactly as the CPU (IEEE division, round-half-even); a group with a non-finite value
// writes NaN.
#include <cmath>

#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;

template <typename Tin, typename Tout, int kPerLane>
__global__ void group_fake_quantize_kernel(const Tin* w, const float* s, int64_t rows,
                                           int64_t cols, int bits, bool zero_point, Tout* out) {
  const int group = 32 * kPerLane;
  const int64_t groups_per_row = cols / group;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (warp >= rows * groups_per_row) return;
  const int lane = threadIdx.x % 32;
  const int64_t r = warp / groups_per_row, c0 = (warp % groups_per_row) * group;
  float v[kPerLane];
  float lo = INFINITY, hi = -INFINITY;
  bool finite = true;
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t c = c0 + lane + 32 * i;
    v[i] = to_f32(w[r * cols + c]) * (s != nullptr ? s[c] : 1.0f);
    lo = fminf(lo, v[i]);
    hi = fmaxf(hi, v[i]);
    finite = finite && isfinite(v[i]);
  }
  for (int o = 16; o > 0; o /= 2) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
  finite = __all_sync(0xffffffffu, finite);
  float scale, zero = 0.0f, max_int = 0.0f, half = 0.0f;
  if (zero_point) {
    max_int = static_cast<float>((1 << bits) - 1);
    scale = __half2float(__float2half_rn(fmaxf(hi - lo, 1e-5f) / max_int));
    zero = fminf(fmaxf(-rintf(lo / scale), 0.0f), max_int);
  } else {
    half = static_cast<float>(1 << (bits - 1));
    scale = __half2float(__float2half_rn(fmaxf(fmaxf(fabsf(lo), fabsf(hi)), 1e-5f) / (half - 1.0f)));
  }
  finite = finite && isfinite(scale);
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t c = c0 + lane + 32 * i;
    const float q = rintf(v[i] / scale);
    // asymmetric: code = clamp(q + zero, 0, max_int), w' = (code − zero)·scale;
    // symmetric: w' = clamp(q, −half, half − 1)·scale.
    float x = zero_point ? (fminf(fmaxf(q + zero, 0.0f), max_int) - zero) * scale
                         : fminf(fmaxf(q, -half), half - 1.0f) * scale;
    if (s != nullptr) x /= s[c];
    out[r * cols + c] = from_f32<Tout>(finite ? x : NAN);
  }
}

}  // namespace

void CudaBackend::group_fake_quantize(const Tensor& w, const Tensor& s, int bits, int group_size,
                                      bool zero_point, Tensor& out) {
  OpTimer timer(profiler_, stream_, "group_fake_quantize");
  REFINERY_CHECK(w.ndim() == 2 && out.shape() == w.shape(),
                 "group_fake_quantize: w [out, in] and out of its shape, found ", w.describe(),
                 " and ", out.describe());
  REFINERY_CHECK(bits == 3 || bits == 4 || bits == 8, "group_fake_quantize: bits ", bits);
  REFINERY_CHECK(group_size == 32 || group_size == 64 || group_size == 128,
                 "group_fake_quantize: group size ", group_size);
  const int64_t rows = w.size(0), cols = w.size(1);
  REFINERY_CHECK(cols % group_size == 0, "group_fake_quantize: ", cols, " inputs are not groups of ",
                 group_size);
  if (s.defined()) require_f32(s, {cols}, "group_fake_quantize s");
  const Tensor wd = on_device(w);
  const float* ps = s.defined() ? on_device(s).data<float>() : nullptr;
  const int64_t warps = rows * (cols / group_size);
  if (warps == 0) return;
  const unsigned blocks = static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
  dispatch_activation(w.dtype(), "group_fake_quantize (w)", [&](auto in_tag) {
    using Tin = decltype(in_tag);
    dispatch_activation(out.dtype(), "group_fake_quantize (out)", [&](auto out_tag) {
      using Tout = decltype(out_tag);
      auto* po = static_cast<Tout*>(out.mutable_data());
      const auto* pw = static_cast<const Tin*>(wd.data());
      if (group_size == 32)
        group_fake_quantize_kernel<Tin, Tout, 1><<<blocks, 32 * kWarpsPerBlock, 0, stream_>>>(
            pw, ps, rows, cols, bits, zero_point, po);
      else if (group_size == 64)
        group_fake_quantize_kernel<Tin, Tout, 2><<<blocks, 32 * kWarpsPerBlock, 0, stream_>>>(
            pw, ps, rows, cols, bits, zero_point, po);
      else
        group_fake_quantize_kernel<Tin, Tout, 4><<<blocks, 32 * kWarpsPerBlock, 0, stream_>>>(
            pw, ps, rows, cols, bits, zero_point, po);
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "group_fake_quantize");
}

}  // namespace refinery::backend::cuda
