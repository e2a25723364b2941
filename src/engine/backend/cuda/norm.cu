// RMSNorm on the GPU: y = x * rsqrt(mean(x²) + eps) * weight, one thread block per row, x and y
// f32 or bf16 (statistics in f32).
// Memory bound (each row is read twice, written once; the second read hits L1/L2). Statistics in
// f32 with a tree reduction (the CPU sums in f64: the two agree to a few f32 ulps). In-place safe:
// each element is read and written by the same thread.
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kNormThreads = 256;

template <typename T, typename Y>
__global__ void rms_norm_kernel(const T* x, const void* weight, ElementType weight_type,
                                int64_t d, float eps, Y* y) {
  __shared__ float partial[kNormThreads / 32];
  __shared__ float inv_rms;
  const int64_t row = blockIdx.x;
  const T* xr = x + row * d;
  Y* yr = y + row * d;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) sum += to_f32(xr[i]) * to_f32(xr[i]);
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kNormThreads / 32; ++w) total += partial[w];
    inv_rms = 1.0f / sqrtf(total / static_cast<float>(d) + eps);
  }
  __syncthreads();
  const float inv = inv_rms;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
    yr[i] = from_f32<Y>((to_f32(xr[i]) * inv) * load_f32(weight, weight_type, i));
}

}  // namespace

void CudaBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& y) {
  OpTimer timer(profiler_, stream_, "rms_norm");
  const RowsCols sizes = check_rms_norm(Device::kCUDA, x, weight, y);
  const int64_t rows = sizes.rows, d = sizes.cols;
  REFINERY_CHECK(rows < (int64_t{1} << 31), "rms_norm: too many rows: ", rows);
  if (rows == 0 || d == 0) return;
  const Tensor w = on_device(weight);
  dispatch_activation(x.dtype(), "rms_norm", [&](auto x_tag) {
    using T = decltype(x_tag);
    dispatch_activation(y.dtype(), "rms_norm", [&](auto y_tag) {
      using Y = decltype(y_tag);
      rms_norm_kernel<T, Y><<<static_cast<unsigned>(rows), kNormThreads, 0, stream_>>>(
          static_cast<const T*>(x.data()), w.data(), element_type(w.dtype(), "rms_norm weight"),
          d, eps, static_cast<Y*>(y.mutable_data()));
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "rms_norm");
}

}  // namespace refinery::backend::cuda
