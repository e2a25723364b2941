// The quantization ops of AWQ's searches on the GPU (backend.hpp).
// group_fake_quantize (the math of src/quantize/group_quant.cpp): one warp per quantization group
// (row r, inputs [c0, c0 + group)), each lane holding group/32 values (group = 32, 64 or 128).
// Min/max by warp shuffles; the optional clamp to ±ratio·max|v|; the fp16-rounded scale, zero and
// codes exactly as the CPU (IEEE division, round-half-even); a group with a non-finite value
// writes NaN.
// group_output_errors: one block per (group g, tile of 32 output rows); d = q − w of the tile in
// shared memory (rows padded by one float: conflict-free reads across lanes), x in tiles of 32
// rows; each thread owns one output row and 4 input rows per tile, squares its dot products and
// the 8 warps' sums are added in a fixed order.
#include <cmath>

#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;

template <typename Tin, typename Tout, int kPerLane>
__global__ void group_fake_quantize_kernel(const Tin* w, const float* s, int64_t rows,
                                           int64_t cols, int bits, bool zero_point,
                                           float clip_ratio, Tout* out) {
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
  if (clip_ratio != 1.0f) {  // clamp to ±ratio·max|v|: the clamped group's min/max follow
    const float m = fmaxf(fabsf(lo), fabsf(hi)) * clip_ratio;
    for (int i = 0; i < kPerLane; ++i) v[i] = fminf(fmaxf(v[i], -m), m);
    lo = fmaxf(lo, -m);
    hi = fminf(hi, m);
  }
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

constexpr int kErrRows = 32, kErrT = 32, kErrThreads = 256;

template <int kGroup>
__global__ void group_output_errors_kernel(const float* x, const float* q, const float* w,
                                           int64_t n, int64_t in, int64_t out, float* err) {
  __shared__ float d[kErrRows][kGroup + 1];
  __shared__ float xs[kErrT][kGroup];
  __shared__ float partial[kErrThreads / 32][kErrRows];
  const int64_t g = blockIdx.x, o0 = static_cast<int64_t>(blockIdx.y) * kErrRows;
  const int64_t c0 = g * kGroup;
  for (int i = threadIdx.x; i < kErrRows * kGroup; i += kErrThreads) {
    const int r = i / kGroup, c = i % kGroup;
    const int64_t o = o0 + r;
    d[r][c] = o < out ? q[o * in + c0 + c] - w[o * in + c0 + c] : 0.0f;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;  // lane: output row of the tile
  float acc = 0.0f;
  for (int64_t t0 = 0; t0 < n; t0 += kErrT) {
    __syncthreads();
    for (int i = threadIdx.x; i < kErrT * kGroup; i += kErrThreads) {
      const int r = i / kGroup, c = i % kGroup;
      xs[r][c] = t0 + r < n ? x[(t0 + r) * in + c0 + c] : 0.0f;
    }
    __syncthreads();
    for (int j = 0; j < kErrT / (kErrThreads / 32); ++j) {
      const int t = warp + j * (kErrThreads / 32);
      float dot = 0.0f;
#pragma unroll 8
      for (int c = 0; c < kGroup; ++c) dot = fmaf(xs[t][c], d[lane][c], dot);
      acc = fmaf(dot, dot, acc);
    }
  }
  partial[warp][lane] = acc;
  __syncthreads();
  if (warp == 0 && o0 + lane < out) {
    float total = 0.0f;
    for (int k = 0; k < kErrThreads / 32; ++k) total += partial[k][lane];
    err[(o0 + lane) * (in / kGroup) + g] = total / static_cast<float>(n > 0 ? n : 1);
  }
}

}  // namespace

void CudaBackend::group_output_errors(const Tensor& x, const Tensor& q, const Tensor& w,
                                      int group_size, Tensor& err) {
  OpTimer timer(profiler_, stream_, "group_output_errors");
  REFINERY_CHECK(x.ndim() == 2 && w.ndim() == 2 && w.size(1) % group_size == 0 &&
                     (group_size == 32 || group_size == 64 || group_size == 128),
                 "group_output_errors: x [n, in], w [out, in], group 32/64/128 dividing in; found ",
                 x.describe(), ", ", w.describe(), ", group ", group_size);
  const int64_t n = x.size(0), in = w.size(1), out = w.size(0), groups = in / group_size;
  require_f32(x, {n, in}, "group_output_errors x");
  require_f32(q, {out, in}, "group_output_errors q");
  require_f32(w, {out, in}, "group_output_errors w");
  require_f32(err, {out, groups}, "group_output_errors err");
  if (out == 0 || groups == 0) return;
  const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>((out + kErrRows - 1) / kErrRows));
  const float *px = x.data<float>(), *pq = q.data<float>(), *pw = w.data<float>();
  float* pe = err.mutable_data<float>();
  if (group_size == 32)
    group_output_errors_kernel<32><<<grid, kErrThreads, 0, stream_>>>(px, pq, pw, n, in, out, pe);
  else if (group_size == 64)
    group_output_errors_kernel<64><<<grid, kErrThreads, 0, stream_>>>(px, pq, pw, n, in, out, pe);
  else
    group_output_errors_kernel<128><<<grid, kErrThreads, 0, stream_>>>(px, pq, pw, n, in, out, pe);
  REFINERY_CUDA_AFTER_LAUNCH(*this, "group_output_errors");
}

void CudaBackend::group_fake_quantize(const Tensor& w, const Tensor& s, const FakeQuantSpec& q,
                                      Tensor& out) {
  const int bits = q.bits, group_size = q.group_size;
  const bool zero_point = q.zero_point;
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
            pw, ps, rows, cols, bits, zero_point, q.clip_ratio, po);
      else if (group_size == 64)
        group_fake_quantize_kernel<Tin, Tout, 2><<<blocks, 32 * kWarpsPerBlock, 0, stream_>>>(
            pw, ps, rows, cols, bits, zero_point, q.clip_ratio, po);
      else
        group_fake_quantize_kernel<Tin, Tout, 4><<<blocks, 32 * kWarpsPerBlock, 0, stream_>>>(
            pw, ps, rows, cols, bits, zero_point, q.clip_ratio, po);
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "group_fake_quantize");
}

}  // namespace refinery::backend::cuda
