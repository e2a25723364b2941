// rope_backward on the GPU: dx += Rᵀ · dy (dx = Rᵀ · dy when overwriting: dx is not read), the
// inverse rotation at the same positions. For a pair
// (a, b) rotated forward as y_a = x_a·c − x_b·s, y_b = x_b·c + x_a·s, the transpose gives
//   dx_a += dy_a·c + dy_b·s,   dx_b += dy_b·c − dy_a·s;
// the dims outside [offset, offset + rotary_dim) pass dy through (dx += dy). The same two paths
// as the forward (rope.cu: vectorized over groups of 8 pairs, or one block per (token, head) row),
// the same f32 formulas on both, the same host/device table handling. Memory bound.
#include "engine/backend/cuda/kernel_util.cuh"
#include "engine/backend/cuda/rope_vector.cuh"

namespace refinery::backend::cuda {

namespace {

// RopeChunk, TableChunk, rope_vectorizable, check_rope_tables, kRopeThreads: rope_vector.cuh.
using namespace rope_detail;

template <typename T>
__global__ void rope_backward_kernel(const T* dy, const float* cos_table, const float* sin_table,
                                     int64_t heads, int64_t d, int64_t offset, int64_t half,
                                     int64_t segment, bool interleaved, bool overwrite, T* dx) {
  const int64_t row = blockIdx.x;  // t * heads + h
  const int64_t t = (row / heads) % segment;  // the table row (rope.cu: segments)
  const T* gi = dy + row * d;
  T* xi = dx + row * d;
  const float* c = cos_table + t * half;
  const float* s = sin_table + t * half;
  auto old = [&](int64_t j) { return overwrite ? 0.0f : to_f32(xi[j]); };
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
    if (j < offset || j >= offset + 2 * half) xi[j] = from_f32<T>(old(j) + to_f32(gi[j]));
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const int64_t a = offset + (interleaved ? 2 * i : i);
    const int64_t b = offset + (interleaved ? 2 * i + 1 : i + half);
    const float g0 = to_f32(gi[a]), g1 = to_f32(gi[b]);
    xi[a] = from_f32<T>(old(a) + (g0 * c[i] + g1 * s[i]));
    xi[b] = from_f32<T>(old(b) + (g1 * c[i] - g0 * s[i]));
  }
}

// Vectorized: one thread per (row, item), items = half/8 groups of 8 pairs, then the pass-through
// chunks of 8 dims (layout as rope_vec_kernel in rope.cu). Same per-element f32 formulas as
// rope_backward_kernel, so the same results.
template <typename T>
__global__ void rope_backward_vec_kernel(const T* dy, const float* cos_table,
                                         const float* sin_table, uint32_t rows, uint32_t heads,
                                         uint32_t d, uint32_t offset, uint32_t half,
                                         uint32_t segment, bool interleaved, bool overwrite,
                                         T* dx) {
  const uint32_t groups = half / 8, items = groups + (d - 2 * half) / 8;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * items;
       i += gridDim.x * blockDim.x) {
    const uint32_t row = i / items, item = i % items;
    const T* gi = dy + static_cast<int64_t>(row) * d;
    T* xi = dx + static_cast<int64_t>(row) * d;
    if (item >= groups) {  // pass-through dims: dx += dy
      const uint32_t p = (item - groups) * 8, pos = p < offset ? p : p + 2 * half;
      RopeChunk<T> g, o;
      g.load(gi + pos);
      o.load_or_zero(xi + pos, overwrite);
      float v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = o.get(j) + g.get(j);
      o.set(v);
      o.store(xi + pos);
      continue;
    }
    const uint32_t t = (row / heads) % segment, first = item * 8;
    TableChunk c, s;
    c.load(cos_table + static_cast<int64_t>(t) * half + first);
    s.load(sin_table + static_cast<int64_t>(t) * half + first);
    const uint32_t pa = offset + (interleaved ? 2 * first : first);
    const uint32_t pb = interleaved ? pa + 8 : pa + half;
    RopeChunk<T> ga, gb, oa, ob;
    ga.load(gi + pa);
    gb.load(gi + pb);
    oa.load_or_zero(xi + pa, overwrite);
    ob.load_or_zero(xi + pb, overwrite);
    float ra[8], rb[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      // pair j: half-split (element j of a, of b); interleaved elements 2j, 2j + 1 of a|b
      const int ia = interleaved ? (2 * j) % 8 : j, ib = interleaved ? (2 * j + 1) % 8 : j;
      const bool in_b = interleaved && j >= 4;
      const float g0 = interleaved ? (in_b ? gb.get(ia) : ga.get(ia)) : ga.get(j);
      const float g1 = interleaved ? (in_b ? gb.get(ib) : ga.get(ib)) : gb.get(j);
      const float x0 = interleaved ? (in_b ? ob.get(ia) : oa.get(ia)) : oa.get(j);
      const float x1 = interleaved ? (in_b ? ob.get(ib) : oa.get(ib)) : ob.get(j);
      const float n0 = x0 + (g0 * c.v[j] + g1 * s.v[j]), n1 = x1 + (g1 * c.v[j] - g0 * s.v[j]);
      if (interleaved) {
        float* dst = in_b ? rb : ra;
        dst[ia] = n0;
        dst[ib] = n1;
      } else {
        ra[j] = n0;
        rb[j] = n1;
      }
    }
    oa.set(ra);
    ob.set(rb);
    oa.store(xi + pa);
    ob.store(xi + pb);
  }
}

}  // namespace

void CudaBackend::rope_backward(const Tensor& dy, const RopeTable& table, int64_t first_position,
                                int64_t offset, Tensor& dx, GradWrite write,
                                int64_t segment_length) {
  OpTimer timer(profiler_, stream_, "rope_backward");
  if (!dx.defined()) return;
  const RopeSizes sizes =
      check_rope(Device::kCUDA, dy, table, first_position, offset, dx, segment_length);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, d = sizes.d;
  const int64_t half = sizes.half, segment = sizes.segment;
  check_rope_tables(table, half, t_count * heads, "rope_backward");
  if (t_count * heads == 0) return;
  const RopeRows table_rows = rope_rows(*this, table, first_position, t_count, segment);
  const Tensor &cos_rows = table_rows.cos, &sin_rows = table_rows.sin;
  dispatch_activation(dx.dtype(), "rope_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(dy.data());
    T* out = static_cast<T*>(dx.mutable_data());
    const int64_t rows = t_count * heads;
    const bool interleaved = table.pairing == model::RopePairing::kInterleaved;
    const bool overwrite = write == GradWrite::kOverwrite;
    if (rope_vectorizable(in, out, cos_rows.data<float>(), sin_rows.data<float>(), rows, d,
                          offset, half)) {
      const int64_t items = rows * (half / 8 + (d - 2 * half) / 8);
      rope_backward_vec_kernel<T><<<grid_for(items), kThreads, 0, stream_>>>(
          in, cos_rows.data<float>(), sin_rows.data<float>(), static_cast<uint32_t>(rows),
          static_cast<uint32_t>(heads), static_cast<uint32_t>(d), static_cast<uint32_t>(offset),
          static_cast<uint32_t>(half), static_cast<uint32_t>(segment), interleaved, overwrite,
          out);
      return;
    }
    rope_backward_kernel<T><<<static_cast<unsigned>(rows), kRopeThreads, 0, stream_>>>(
        in, cos_rows.data<float>(), sin_rows.data<float>(), heads, d, offset, half, segment,
        interleaved, overwrite, out);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "rope_backward");
}

}  // namespace refinery::backend::cuda
