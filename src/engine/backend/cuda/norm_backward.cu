// rms_norm_backward on the GPU, and the deterministic column reduction the weight gradients use.
//
// With r = 1 / sqrt(mean(x²) + eps), n = x·r (x [R, D], weight w [D]):
//   dx += r · (dy∘w − n · mean(dy∘w∘n)),   dweight[d] += Σ_rows dy[:, d] · n[:, d].
//
// Fast path (D % 8 == 0, D <= 4096, x/dy/dx 16-byte aligned): one WARP per row. A fixed number of
// warps W = min(R, kRowWarps) (independent of the device, so results are reproducible anywhere)
// walks the rows, warp w taking rows w, w + W, ... in order. Lane l owns the 8-element chunks
// l, l + 32, ... of every row, so it loads them with 16-byte loads, keeps them in registers
// between the two halves of the row (sums of x² and dy·w·x by a warp butterfly, no block barrier,
// no shared-memory round trip), and accumulates dy·n for ITS columns in registers across all of
// the warp's rows. Each warp then writes its dweight partial once into row w of an f32 [W, D]
// buffer (no float atomics, no memset), and add_column_sums adds Σ_w partial[w, :] into dweight
// in a fixed order. Memory bound: x and dy are read once, dx read and written once.
//
// Why the previous kernel (kept below as the general path) was ~4x off the bandwidth on
// [8192, 2048]: 256 blocks of 256 threads (2 blocks, 16 warps per SM), scalar 4- and 2-byte
// loads, two block barriers per row, and a second pass that re-read x and dy and did a
// read-modify-write of the block's partial row for every row; each row therefore cost several
// dependent memory latencies with little in flight. Its column sum ran d threads (8 blocks for
// D = 2048), each adding 256 partials one after another.
#include <algorithm>
#include <cstdint>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kNormThreads = 256;
constexpr int64_t kNormBlocks = 256;

// Fast path: warps in the whole grid (the number of dweight partials) and per block.
constexpr int64_t kRowWarps = 1024;
constexpr int kWarpsPerBlock = 4;
constexpr int64_t kMaxFastD = 4096;  // 16 chunks of 8 per lane

// Block-wide sum of two values (every thread gets both totals); `scratch` holds 2·warps floats.
__device__ inline float2 block_sum2(float a, float b, float* scratch) {
  for (int o = 16; o > 0; o /= 2) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  const int warps = blockDim.x / 32;
  if (threadIdx.x % 32 == 0) {
    scratch[threadIdx.x / 32] = a;
    scratch[warps + threadIdx.x / 32] = b;
  }
  __syncthreads();
  float ta = 0.0f, tb = 0.0f;
  for (int w = 0; w < warps; ++w) {
    ta += scratch[w];
    tb += scratch[warps + w];
  }
  __syncthreads();  // scratch is reused by the next row
  return make_float2(ta, tb);
}

// General path (any D, any alignment). X: x and dx; Y: dy. partial may be null (no dweight), dx
// may be null (no dx).
template <typename X, typename Y>
__global__ void rms_norm_backward_kernel(const X* x, const Y* dy, const void* weight,
                                         ElementType weight_type, int64_t rows, int64_t d,
                                         float eps, X* dx, float* partial) {
  __shared__ float scratch[2 * kNormThreads / 32];
  float* part = partial != nullptr ? partial + blockIdx.x * d : nullptr;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const X* xr = x + row * d;
    const Y* dyr = dy + row * d;
    float ss = 0.0f, dot = 0.0f;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float xv = to_f32(xr[i]);
      ss += xv * xv;
      dot += to_f32(dyr[i]) * load_f32(weight, weight_type, i) * xv;
    }
    const float2 totals = block_sum2(ss, dot, scratch);
    const float r = 1.0f / sqrtf(totals.x / static_cast<float>(d) + eps);
    // mean(dy∘w∘n) = r · mean(dy∘w∘x)
    const float c = r * totals.y / static_cast<float>(d);
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
      const float n = to_f32(xr[i]) * r;
      const float g = to_f32(dyr[i]);
      if (dx != nullptr) {
        X* out = dx + row * d + i;
        *out = from_f32<X>(to_f32(*out) + r * (g * load_f32(weight, weight_type, i) - n * c));
      }
      if (part != nullptr) part[i] += g * n;
    }
  }
}

// Eight consecutive elements of type T held in registers as loaded: 2 x 16 bytes for f32, 16
// bytes for bf16. The pointer must be 16-byte aligned.
template <typename T>
struct Chunk8;
template <>
struct Chunk8<float> {
  float4 lo, hi;
  __device__ void load(const float* p) {
    lo = *reinterpret_cast<const float4*>(p);
    hi = *reinterpret_cast<const float4*>(p + 4);
  }
  __device__ void store(float* p) const {
    *reinterpret_cast<float4*>(p) = lo;
    *reinterpret_cast<float4*>(p + 4) = hi;
  }
  __device__ float get(int j) const {
    const float v[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    return v[j];
  }
  __device__ void set(const float (&v)[8]) {
    lo = make_float4(v[0], v[1], v[2], v[3]);
    hi = make_float4(v[4], v[5], v[6], v[7]);
  }
};
template <>
struct Chunk8<__nv_bfloat16> {
  uint4 raw;
  __device__ void load(const __nv_bfloat16* p) { raw = *reinterpret_cast<const uint4*>(p); }
  __device__ void store(__nv_bfloat16* p) const { *reinterpret_cast<uint4*>(p) = raw; }
  __device__ float get(int j) const {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
    const uint32_t w = words[j / 2];
    return __uint_as_float(j % 2 == 0 ? w << 16 : w & 0xffff0000u);
  }
  __device__ void set(const float (&v)[8]) {
    uint32_t words[4];
    for (int k = 0; k < 4; ++k) {
      const uint32_t a = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k]));
      const uint32_t b = __bfloat16_as_ushort(__float2bfloat16_rn(v[2 * k + 1]));
      words[k] = a | (b << 16);
    }
    raw = make_uint4(words[0], words[1], words[2], words[3]);
  }
};

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Fast path, see the file comment. K: chunks of 8 per lane (D <= 256·K); kCache keeps the row's
// x and dy in registers between the two halves (re-read, from L1/L2, when K is large).
// partial: [warps, D], every row written (no memset needed). Shared memory: w as f32 [D].
template <typename X, typename Y, int K>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    rms_norm_backward_warp_kernel(const X* x, const Y* dy, const void* weight,
                                  ElementType weight_type, int64_t rows, int64_t d, float eps,
                                  int64_t warps, X* dx, float* partial, __nv_bfloat16* dx_bf16) {
  constexpr bool kCache = K <= 8;
  extern __shared__ float w_f32[];
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) w_f32[i] = load_f32(weight, weight_type, i);
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t warp = blockIdx.x * int64_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (warp >= warps) return;
  const int64_t chunks = d / 8;
  float acc[K][8];
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[k][j] = 0.0f;
  Chunk8<X> xc[kCache ? K : 1];
  Chunk8<Y> gc[kCache ? K : 1];
  for (int64_t row = warp; row < rows; row += warps) {
    const X* xr = x + row * d;
    const Y* dyr = dy + row * d;
    float ss = 0.0f, dot = 0.0f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t chunk = k * 32 + lane;
      if (chunk >= chunks) continue;
      Chunk8<X> xv;
      Chunk8<Y> gv;
      xv.load(xr + chunk * 8);
      gv.load(dyr + chunk * 8);
      const float* wv = w_f32 + chunk * 8;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const float xe = xv.get(j);
        ss += xe * xe;
        dot += gv.get(j) * wv[j] * xe;
      }
      if constexpr (kCache) {
        xc[k] = xv;
        gc[k] = gv;
      }
    }
    ss = warp_sum(ss);
    dot = warp_sum(dot);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
    // mean(dy∘w∘n) = r · mean(dy∘w∘x)
    const float c = r * dot / static_cast<float>(d);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t chunk = k * 32 + lane;
      if (chunk >= chunks) continue;
      Chunk8<X> xv;
      Chunk8<Y> gv;
      if constexpr (kCache) {
        xv = xc[k];
        gv = gc[k];
      } else {
        xv.load(xr + chunk * 8);
        gv.load(dyr + chunk * 8);
      }
      const float* wv = w_f32 + chunk * 8;
      if (dx != nullptr) {
        X* out = dx + row * d + chunk * 8;
        Chunk8<X> ov;
        ov.load(out);
        float v[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          const float n = xv.get(j) * r;
          v[j] = ov.get(j) + r * (gv.get(j) * wv[j] - n * c);
        }
        ov.set(v);
        ov.store(out);
        if (dx_bf16 != nullptr) {  // the same values rounded once (what convert would write)
          Chunk8<__nv_bfloat16> bv;
          bv.set(v);
          bv.store(dx_bf16 + row * d + chunk * 8);
        }
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[k][j] += gv.get(j) * (xv.get(j) * r);
    }
  }
  if (partial == nullptr) return;
  float* part = partial + warp * d;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int64_t chunk = k * 32 + lane;
    if (chunk >= chunks) continue;
    *reinterpret_cast<float4*>(part + chunk * 8) =
        make_float4(acc[k][0], acc[k][1], acc[k][2], acc[k][3]);
    *reinterpret_cast<float4*>(part + chunk * 8 + 4) =
        make_float4(acc[k][4], acc[k][5], acc[k][6], acc[k][7]);
  }
}

// dst[c] += Σ_p partial[p, c]. Block (32, kSlices): column blockIdx.x·32 + threadIdx.x; slice s =
// threadIdx.y adds the parts s, s + kSlices, ... in order, then thread y = 0 adds the slices in
// order: a fixed summation order for given (parts, d), whatever the device.
constexpr int kSlices = 16;
__global__ void column_sums_kernel(const float* partial, int64_t parts, int64_t d, float* dst) {
  __shared__ float slice_sum[kSlices][33];
  for (int64_t c0 = blockIdx.x * int64_t{32}; c0 < d; c0 += int64_t{gridDim.x} * 32) {
    const int64_t c = c0 + threadIdx.x;
    float acc = 0.0f;
    if (c < d) {
#pragma unroll 8
      for (int64_t p = threadIdx.y; p < parts; p += kSlices) acc += partial[p * d + c];
    }
    slice_sum[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < d) {
      float total = 0.0f;
      for (int s = 0; s < kSlices; ++s) total += slice_sum[s][threadIdx.x];
      dst[c] += total;
    }
    __syncthreads();  // slice_sum is reused by the next column tile
  }
}

}  // namespace

void CudaBackend::add_column_sums(const float* partial, int64_t parts, int64_t d, float* dst,
                                  const char* op) {
  if (d == 0) return;
  const auto tiles = static_cast<unsigned>(std::clamp<int64_t>((d + 31) / 32, 1, 65535));
  column_sums_kernel<<<tiles, dim3(32, kSlices), 0, stream_>>>(partial, parts, d, dst);
  REFINERY_CUDA_AFTER_LAUNCH(*this, op);
}

void CudaBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, float eps,
                                    const Tensor& dy, Tensor& dx, Tensor& dweight) {
  OpTimer timer(profiler_, stream_, "rms_norm_backward");
  rms_norm_backward_fused(x, weight, eps, dy, dx, dweight, nullptr);
}

void CudaBackend::rms_norm_backward_and_convert(const Tensor& x, const Tensor& weight, float eps,
                                                const Tensor& dy, Tensor& dx, Tensor& dweight,
                                                Tensor& dx_converted) {
  OpTimer timer(profiler_, stream_, "rms_norm_backward");
  const bool fusable = dx.defined() && dx.dtype() == DType::kF32 && dx_converted.defined() &&
                       dx_converted.device() == Device::kCUDA &&
                       dx_converted.dtype() == DType::kBF16 && dx_converted.shape() == dx.shape() &&
                       aligned16(dx_converted.data());
  __nv_bfloat16* copy =
      fusable ? static_cast<__nv_bfloat16*>(dx_converted.mutable_data()) : nullptr;
  if (!rms_norm_backward_fused(x, weight, eps, dy, dx, dweight, copy)) convert(dx, dx_converted);
}

bool CudaBackend::rms_norm_backward_fused(const Tensor& x, const Tensor& weight, float eps,
                                          const Tensor& dy, Tensor& dx, Tensor& dweight,
                                          __nv_bfloat16* dx_bf16) {
  REFINERY_CHECK(x.ndim() == 2, "rms_norm_backward: x must be [R, D], found ", x.describe());
  const int64_t rows = x.size(0), d = x.size(1);
  backend::require_float(Device::kCUDA, x, {rows, d}, "rms_norm_backward x");
  backend::require_float(Device::kCUDA, dy, {rows, d}, "rms_norm_backward dy");
  REFINERY_CHECK(weight.numel() == d, "rms_norm_backward: weight must have ", d,
                 " elements, found ", weight.describe());
  if (dx.defined()) {
    backend::require_float(Device::kCUDA, dx, {rows, d}, "rms_norm_backward dx");
    require_same_dtype(x, dx, "rms_norm_backward x and dx");
  }
  if (dweight.defined()) require_f32(dweight, {d}, "rms_norm_backward dweight");
  if (rows == 0 || d == 0 || (!dx.defined() && !dweight.defined())) return false;
  const Tensor w = on_device(weight);
  const ElementType w_type = element_type(w.dtype(), "rms_norm_backward weight");
  const bool fast = d % 8 == 0 && d <= kMaxFastD && aligned16(x.data()) && aligned16(dy.data()) &&
                    (!dx.defined() || aligned16(dx.mutable_data()));
  // The bf16 copy comes from the fast kernel only (f32 dx); elsewhere the caller converts.
  if (!fast || !dx.defined() || dx.dtype() != DType::kF32) dx_bf16 = nullptr;
  // Rows of partial dweight sums: one per warp (fast path) or per block (general path).
  const int64_t parts = fast ? std::min(rows, kRowWarps) : std::min(rows, kNormBlocks);
  Tensor partial;
  if (dweight.defined()) {
    partial = empty(DType::kF32, {parts, d});
    if (!fast)  // the general kernel adds into its rows; the fast one writes each row once
      REFINERY_CUDA_CHECK(cudaMemsetAsync(partial.mutable_data(), 0, partial.nbytes(), stream_));
  }
  float* partial_ptr = dweight.defined() ? partial.mutable_data<float>() : nullptr;
  dispatch_activation(x.dtype(), "rms_norm_backward", [&](auto x_tag) {
    using X = decltype(x_tag);
    dispatch_activation(dy.dtype(), "rms_norm_backward", [&](auto y_tag) {
      using Y = decltype(y_tag);
      const X* xp = static_cast<const X*>(x.data());
      const Y* dyp = static_cast<const Y*>(dy.data());
      X* dxp = dx.defined() ? static_cast<X*>(dx.mutable_data()) : nullptr;
      if (!fast) {
        rms_norm_backward_kernel<X, Y>
            <<<static_cast<unsigned>(parts), kNormThreads, 0, stream_>>>(
                xp, dyp, w.data(), w_type, rows, d, eps, dxp, partial_ptr);
        return;
      }
      const auto blocks = static_cast<unsigned>((parts + kWarpsPerBlock - 1) / kWarpsPerBlock);
      const std::size_t smem = static_cast<std::size_t>(d) * sizeof(float);
      auto launch = [&](auto kernel) {
        kernel<<<blocks, kWarpsPerBlock * 32, smem, stream_>>>(xp, dyp, w.data(), w_type, rows, d,
                                                                eps, parts, dxp, partial_ptr,
                                                                dx_bf16);
      };
      const int64_t per_lane = (d / 8 + 31) / 32;  // chunks of 8 per lane
      if (per_lane <= 1)
        launch(rms_norm_backward_warp_kernel<X, Y, 1>);
      else if (per_lane <= 2)
        launch(rms_norm_backward_warp_kernel<X, Y, 2>);
      else if (per_lane <= 4)
        launch(rms_norm_backward_warp_kernel<X, Y, 4>);
      else if (per_lane <= 8)
        launch(rms_norm_backward_warp_kernel<X, Y, 8>);
      else
        launch(rms_norm_backward_warp_kernel<X, Y, 16>);
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "rms_norm_backward");
  if (dweight.defined())
    add_column_sums(partial.data<float>(), parts, d, dweight.mutable_data<float>(),
                    "rms_norm_backward (dweight)");
  return dx_bf16 != nullptr;
}

}  // namespace refinery::backend::cuda
