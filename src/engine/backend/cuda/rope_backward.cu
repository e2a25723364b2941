// rope_backward on the GPU: dx += Rᵀ · dy, the inverse rotation at the same positions. For a pair
// (a, b) rotated forward as y_a = x_a·c − x_b·s, y_b = x_b·c + x_a·s, the transpose gives
//   dx_a += dy_a·c + dy_b·s,   dx_b += dy_b·c − dy_a·s;
// the dims outside [offset, offset + rotary_dim) pass dy through (dx += dy). One thread block per
// (token, head) row, as the forward (rope.cu); the same host/device table handling. Memory bound.
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kRopeThreads = 64;

template <typename T>
__global__ void rope_backward_kernel(const T* dy, const float* cos_table, const float* sin_table,
                                     int64_t heads, int64_t d, int64_t offset, int64_t half,
                                     bool interleaved, T* dx) {
  const int64_t row = blockIdx.x;  // t * heads + h
  const int64_t t = row / heads;
  const T* gi = dy + row * d;
  T* xi = dx + row * d;
  const float* c = cos_table + t * half;
  const float* s = sin_table + t * half;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    if (j < offset || j >= offset + 2 * half) xi[j] = from_f32<T>(to_f32(xi[j]) + to_f32(gi[j]));
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const int64_t a = offset + (interleaved ? 2 * i : i);
    const int64_t b = offset + (interleaved ? 2 * i + 1 : i + half);
    const float g0 = to_f32(gi[a]), g1 = to_f32(gi[b]);
    xi[a] = from_f32<T>(to_f32(xi[a]) + (g0 * c[i] + g1 * s[i]));
    xi[b] = from_f32<T>(to_f32(xi[b]) + (g1 * c[i] - g0 * s[i]));
  }
}

}  // namespace

void CudaBackend::rope_backward(const Tensor& dy, const RopeTable& table, int64_t first_position,
                                int64_t offset, Tensor& dx) {
  OpTimer timer(profiler_, stream_, "rope_backward");
  if (!dx.defined()) return;
  const RopeSizes sizes = check_rope(Device::kCUDA, dy, table, first_position, offset, dx);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, d = sizes.d;
  const int64_t half = sizes.half;
  REFINERY_CHECK(table.cos.dtype() == DType::kF32 && table.sin.dtype() == DType::kF32 &&
                     table.cos.ndim() == 2 && table.cos.size(1) == half &&
                     table.sin.shape() == table.cos.shape(),
                 "rope_backward: f32 [positions, ", half, "] tables expected, found ",
                 table.cos.describe(), " and ", table.sin.describe());
  REFINERY_CHECK(t_count * heads < (int64_t{1} << 31), "rope_backward: too many rows");
  if (t_count * heads == 0) return;
  const Tensor cos_rows = upload(table.cos.slice(first_position, first_position + t_count));
  const Tensor sin_rows = upload(table.sin.slice(first_position, first_position + t_count));
  dispatch_activation(dx.dtype(), "rope_backward", [&](auto tag) {
    using T = decltype(tag);
    rope_backward_kernel<T><<<static_cast<unsigned>(t_count * heads), kRopeThreads, 0, stream_>>>(
        static_cast<const T*>(dy.data()), cos_rows.data<float>(), sin_rows.data<float>(), heads,
        d, offset, half, table.pairing == model::RopePairing::kInterleaved,
        static_cast<T*>(dx.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "rope_backward");
}

}  // namespace refinery::backend::cuda
