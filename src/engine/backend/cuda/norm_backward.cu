// rms_norm_backward on the GPU, and the deterministic column reduction the weight gradients use.
//
// With r = 1 / sqrt(mean(x²) + eps), n = x·r (x [R, D], weight w [D]):
//   dx += r · (dy∘w − n · mean(dy∘w∘n)),   dweight[d] += Σ_rows dy[:, d] · n[:, d].
// A fixed grid of kNormBlocks blocks (independent of the device, so results are reproducible
// anywhere) walks the rows, block b taking rows b, b + G, ... in order. Per row: one pass sums x²
// and dy·w·x (f32 per thread, tree reduction), a second pass writes dx and adds dy·n into the
// block's own row of an f32 partial [G, D] (no float atomics). add_column_sums then adds
// Σ_b partial[b, :] into dweight in b order. Memory bound.
#include <algorithm>

#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kNormThreads = 256;
constexpr int64_t kNormBlocks = 256;

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

// X: x and dx; Y: dy. partial may be null (no dweight), dx may be null (no dx).
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

__global__ void column_sums_kernel(const float* partial, int64_t parts, int64_t d, float* dst) {
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < d;
       c += int64_t{gridDim.x} * blockDim.x) {
    float acc = 0.0f;
    for (int64_t p = 0; p < parts; ++p) acc += partial[p * d + c];
    dst[c] += acc;
  }
}

}  // namespace

void CudaBackend::add_column_sums(const float* partial, int64_t parts, int64_t d, float* dst,
                                  const char* op) {
  if (d == 0) return;
  column_sums_kernel<<<grid_for(d), kThreads, 0, stream_>>>(partial, parts, d, dst);
  REFINERY_CUDA_AFTER_LAUNCH(*this, op);
}

void CudaBackend::rms_norm_backward(const Tensor& x, const Tensor& weight, float eps,
                                    const Tensor& dy, Tensor& dx, Tensor& dweight) {
  OpTimer timer(profiler_, stream_, "rms_norm_backward");
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
  if (rows == 0 || d == 0 || (!dx.defined() && !dweight.defined())) return;
  const Tensor w = on_device(weight);
  const int64_t blocks = std::min(rows, kNormBlocks);
  Tensor partial;
  if (dweight.defined()) {
    partial = empty(DType::kF32, {blocks, d});
    REFINERY_CUDA_CHECK(cudaMemsetAsync(partial.mutable_data(), 0, partial.nbytes(), stream_));
  }
  dispatch_activation(x.dtype(), "rms_norm_backward", [&](auto x_tag) {
    using X = decltype(x_tag);
    dispatch_activation(dy.dtype(), "rms_norm_backward", [&](auto y_tag) {
      using Y = decltype(y_tag);
      rms_norm_backward_kernel<X, Y><<<static_cast<unsigned>(blocks), kNormThreads, 0, stream_>>>(
          static_cast<const X*>(x.data()), static_cast<const Y*>(dy.data()), w.data(),
          element_type(w.dtype(), "rms_norm_backward weight"), rows, d, eps,
          dx.defined() ? static_cast<X*>(dx.mutable_data()) : nullptr,
          dweight.defined() ? partial.mutable_data<float>() : nullptr);
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "rms_norm_backward");
  if (dweight.defined())
    add_column_sums(partial.data<float>(), blocks, d, dweight.mutable_data<float>(),
                    "rms_norm_backward (dweight)");
}

}  // namespace refinery::backend::cuda
