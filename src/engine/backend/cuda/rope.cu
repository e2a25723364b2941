// RoPE on the GPU: a table lookup per (token, head, pair). One thread block per (token, head)
// row; each thread rotates whole pairs (reads both members before writing either, so y may alias
// x) and copies the dims outside [offset, offset + rotary_dim). Memory bound.
//
// Tables: a device table (the Transformer uploads its table once through upload()) is read in
// place. A host table is copied per call, only the rows [first_position, first_position + T) this
// call needs (no cache keyed by host addresses: a table may be rebuilt at the same address).
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kRopeThreads = 64;

// cos/sin: [T, half] rows of this call's positions.
template <typename T>
__global__ void rope_kernel(const T* x, const float* cos_table, const float* sin_table,
                            int64_t heads, int64_t d, int64_t offset, int64_t half,
                            bool interleaved, T* y) {
  const int64_t row = blockIdx.x;  // t * heads + h
  const int64_t t = row / heads;
  const T* xi = x + row * d;
  T* yi = y + row * d;
  const float* c = cos_table + t * half;
  const float* s = sin_table + t * half;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    if (j < offset || j >= offset + 2 * half) yi[j] = xi[j];
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const int64_t a = offset + (interleaved ? 2 * i : i);
    const int64_t b = offset + (interleaved ? 2 * i + 1 : i + half);
    const float x0 = to_f32(xi[a]), x1 = to_f32(xi[b]);
    yi[a] = from_f32<T>(x0 * c[i] - x1 * s[i]);
    yi[b] = from_f32<T>(x1 * c[i] + x0 * s[i]);
  }
}

}  // namespace

void CudaBackend::rope(const Tensor& x, const RopeTable& table, int64_t first_position,
                       int64_t offset, Tensor& y) {
  OpTimer timer(profiler_, stream_, "rope");
  const RopeSizes sizes = check_rope(Device::kCUDA, x, table, first_position, offset, y);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, d = sizes.d;
  const int64_t half = sizes.half;
  REFINERY_CHECK(table.cos.dtype() == DType::kF32 && table.sin.dtype() == DType::kF32 &&
                     table.cos.ndim() == 2 && table.cos.size(1) == half &&
                     table.sin.shape() == table.cos.shape(),
                 "rope: f32 [positions, ", half, "] tables expected, found ", table.cos.describe(),
                 " and ", table.sin.describe());
  REFINERY_CHECK(t_count * heads < (int64_t{1} << 31), "rope: too many rows");
  if (t_count * heads == 0) return;
  const Tensor cos_rows = upload(table.cos.slice(first_position, first_position + t_count));
  const Tensor sin_rows = upload(table.sin.slice(first_position, first_position + t_count));
  dispatch_activation(y.dtype(), "rope", [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<static_cast<unsigned>(t_count * heads), kRopeThreads, 0, stream_>>>(
        static_cast<const T*>(x.data()), cos_rows.data<float>(), sin_rows.data<float>(), heads, d,
        offset, half, table.pairing == model::RopePairing::kInterleaved,
        static_cast<T*>(y.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "rope");
}

}  // namespace refinery::backend::cuda
