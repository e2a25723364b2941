// RMSNorm on the GPU, y = x * rsqrt(mean(x²) + eps) * weight, and the residual add fused with it
// (add_rms_norm: x += delta, then out = rms_norm(x)). One thread block per row; statistics in f32.
//
// Memory bound. rms_norm reads each row twice (the second read hits L1/L2) and writes it once;
// add_rms_norm reads x and delta, writes x, re-reads x from cache and writes out: one DRAM read
// of the f32 residual stream and one launch fewer than add followed by rms_norm.
//
// Both kernels share one row walk, so they sum the squares in the same order and add_rms_norm
// equals add + rms_norm bit for bit: the row is cut into chunks of kChunk consecutive elements,
// thread t takes chunks t, t + 256, ... and sums its elements in order; then a warp shuffle tree
// and thread 0 adding the warps' sums in order (the CPU sums in f64: the two agree to a few f32
// ulps). The order depends on D only; when D % kChunk == 0 and the rows are aligned, a chunk is
// one vector load/store (16 bytes of f32, 8 of bf16), otherwise element by element.
// In-place safe (y may alias x; out may alias delta): every chunk is read and written by the same
// thread, and all reads of pass 1 finish (block barrier) before pass 2 writes.
#include <cstdint>

#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kNormThreads = 256;
constexpr int kChunk = 4;

template <typename T>
struct alignas(kChunk * sizeof(T)) ChunkBits {
  T e[kChunk];
};

// Chunk j of a row (elements [j·kChunk, min((j+1)·kChunk, d))) widened to f32; returns its length
// n (the v[k >= n] are unspecified). `vec`: the row holds whole aligned chunks (one vector load).
// The loops run to kChunk with a guard so that v stays in registers.
template <typename T>
__device__ inline int load_chunk(const T* row, int64_t j, int64_t d, bool vec, float v[kChunk]) {
  const int64_t i0 = j * kChunk;
  if (vec) {
    const ChunkBits<T> c = *reinterpret_cast<const ChunkBits<T>*>(row + i0);
#pragma unroll
    for (int k = 0; k < kChunk; ++k) v[k] = to_f32(c.e[k]);
    return kChunk;
  }
  const int n = static_cast<int>(d - i0 < kChunk ? d - i0 : kChunk);
#pragma unroll
  for (int k = 0; k < kChunk; ++k)
    if (k < n) v[k] = to_f32(row[i0 + k]);
  return n;
}

template <typename T>
__device__ inline void store_chunk(T* row, int64_t j, int n, bool vec, const float v[kChunk]) {
  const int64_t i0 = j * kChunk;
  if (vec) {
    ChunkBits<T> c;
#pragma unroll
    for (int k = 0; k < kChunk; ++k) c.e[k] = from_f32<T>(v[k]);
    *reinterpret_cast<ChunkBits<T>*>(row + i0) = c;
    return;
  }
#pragma unroll
  for (int k = 0; k < kChunk; ++k)
    if (k < n) row[i0 + k] = from_f32<T>(v[k]);
}

__device__ inline float add_squares(const float v[kChunk], int n, float sum) {
#pragma unroll
  for (int k = 0; k < kChunk; ++k)
    if (k < n) sum += v[k] * v[k];
  return sum;
}

// v = (v * inv) * weight[i0 + k]: the normed chunk.
__device__ inline void scale_chunk(float v[kChunk], int n, float inv, const void* weight,
                                   ElementType weight_type, int64_t i0) {
#pragma unroll
  for (int k = 0; k < kChunk; ++k)
    if (k < n) v[k] = (v[k] * inv) * load_f32(weight, weight_type, i0 + k);
}

// 1 / sqrt(mean + eps) of a row from each thread's partial sum of squares, in a fixed order (warp
// shuffle tree, then thread 0 over the warps); every thread of the block gets it. Once per kernel.
__device__ inline float block_inverse_rms(float sum, int64_t d, float eps) {
  __shared__ float partial[kNormThreads / 32];
  __shared__ float inv_rms;
  for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kNormThreads / 32; ++w) total += partial[w];
    inv_rms = 1.0f / sqrtf(total / static_cast<float>(d) + eps);
  }
  __syncthreads();
  return inv_rms;
}

template <typename T, typename Y>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_kernel(const T* x, const void* weight, ElementType weight_type, int64_t d, float eps,
                    bool vec, Y* y) {
  const int64_t row = blockIdx.x, chunks = (d + kChunk - 1) / kChunk;
  const T* xr = x + row * d;
  Y* yr = y + row * d;
  float v[kChunk];
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < chunks; j += kNormThreads)
    sum = add_squares(v, load_chunk(xr, j, d, vec, v), sum);
  const float inv = block_inverse_rms(sum, d, eps);
  for (int64_t j = threadIdx.x; j < chunks; j += kNormThreads) {
    const int n = load_chunk(xr, j, d, vec, v);
    scale_chunk(v, n, inv, weight, weight_type, j * kChunk);
    store_chunk(yr, j, n, vec, v);
  }
}

// x f32 [R, d] += delta; out = rms_norm(x). Pass 2 re-reads the thread's own chunks of x.
template <typename D, typename Y>
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(float* x, const D* delta, const void* weight, ElementType weight_type,
                        int64_t d, float eps, bool vec, Y* out) {
  const int64_t row = blockIdx.x, chunks = (d + kChunk - 1) / kChunk;
  float* xr = x + row * d;
  const D* dr = delta + row * d;
  Y* yr = out + row * d;
  float v[kChunk], dv[kChunk];
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < chunks; j += kNormThreads) {
    const int n = load_chunk(xr, j, d, vec, v);
    load_chunk(dr, j, d, vec, dv);
#pragma unroll
    for (int k = 0; k < kChunk; ++k)
      if (k < n) v[k] = v[k] + dv[k];  // as add_kernel: one f32 rounding
    store_chunk(xr, j, n, vec, v);
    sum = add_squares(v, n, sum);
  }
  const float inv = block_inverse_rms(sum, d, eps);
  for (int64_t j = threadIdx.x; j < chunks; j += kNormThreads) {
    const int n = load_chunk(static_cast<const float*>(xr), j, d, vec, v);
    scale_chunk(v, n, inv, weight, weight_type, j * kChunk);
    store_chunk(yr, j, n, vec, v);
  }
}

// Whether rows of d elements of type T starting at p are whole, aligned chunks.
template <typename T>
bool chunk_aligned(const void* p, int64_t d) {
  return d % kChunk == 0 && reinterpret_cast<uintptr_t>(p) % (kChunk * sizeof(T)) == 0;
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
      const bool vec = chunk_aligned<T>(x.data(), d) && chunk_aligned<Y>(y.data(), d);
      rms_norm_kernel<T, Y><<<static_cast<unsigned>(rows), kNormThreads, 0, stream_>>>(
          static_cast<const T*>(x.data()), w.data(), element_type(w.dtype(), "rms_norm weight"),
          d, eps, vec, static_cast<Y*>(y.mutable_data()));
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "rms_norm");
}

void CudaBackend::add_rms_norm(Tensor& x, const Tensor& delta, const Tensor& weight, float eps,
                               Tensor& out) {
  OpTimer timer(profiler_, stream_, "add_rms_norm");
  const RowsCols sizes = check_add_rms_norm(Device::kCUDA, x, delta, weight, out);
  const int64_t rows = sizes.rows, d = sizes.cols;
  REFINERY_CHECK(rows < (int64_t{1} << 31), "add_rms_norm: too many rows: ", rows);
  if (rows == 0 || d == 0) return;
  const Tensor w = on_device(weight);
  dispatch_activation(delta.dtype(), "add_rms_norm", [&](auto delta_tag) {
    using D = decltype(delta_tag);
    dispatch_activation(out.dtype(), "add_rms_norm", [&](auto out_tag) {
      using Y = decltype(out_tag);
      const bool vec = chunk_aligned<float>(x.data(), d) && chunk_aligned<D>(delta.data(), d) &&
                       chunk_aligned<Y>(out.data(), d);
      add_rms_norm_kernel<D, Y><<<static_cast<unsigned>(rows), kNormThreads, 0, stream_>>>(
          x.mutable_data<float>(), static_cast<const D*>(delta.data()), w.data(),
          element_type(w.dtype(), "add_rms_norm weight"), d, eps, vec,
          static_cast<Y*>(out.mutable_data()));
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "add_rms_norm");
}

}  // namespace refinery::backend::cuda
