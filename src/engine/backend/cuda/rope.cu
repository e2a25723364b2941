// RoPE on the GPU: a table lookup per (token, head, pair). Memory bound.
// Vectorized path (dims, offset and rotary_dim/2 multiples of 8, 16-byte aligned operands: every
// model we train): one thread per (row, group of 8 pairs) with 16-byte loads and stores of x/y and
// 32-byte loads of cos/sin, plus one thread per 8 pass-through dims; a flat grid-stride loop.
// General path: one 64-thread block per (token, head) row, scalar. Both read both members of a
// pair before writing either (y may alias x) and use the same f32 formulas (same results).
// In place, neither touches the dims outside the rotary span. Segments (a batched prefill): row t
// uses position first_position + t % segment, so all sequences take one launch.
// The general kernel alone took ~27 us a call on the student's [8192, 32, 64] bf16 q: 262k blocks
// of which one warp did 2-byte loads and the other had nothing to do for a 128-byte row.
//
// Tables: a device table (the Transformer uploads its table once through upload()) is read in
// place; a host table is copied per call, only the rows this call needs (rope_rows,
// rope_vector.cuh).
#include "engine/backend/cuda/kernel_util.cuh"
#include "engine/backend/cuda/rope_vector.cuh"

namespace refinery::backend::cuda {

namespace {

// RopeChunk, TableChunk, rope_vectorizable, check_rope_tables, kRopeThreads: rope_vector.cuh.
using namespace rope_detail;

// cos/sin: [min(T, segment), half] rows of this call's positions; row t of x uses table row
// t % segment. copy_rest: copy the dims outside the rotary span (false when y is x).
template <typename T>
__global__ void rope_kernel(const T* x, const float* cos_table, const float* sin_table,
                            int64_t heads, int64_t d, int64_t offset, int64_t half,
                            int64_t segment, bool interleaved, bool copy_rest, T* y) {
  const int64_t row = blockIdx.x;  // t * heads + h
  const int64_t t = (row / heads) % segment;
  const T* xi = x + row * d;
  T* yi = y + row * d;
  const float* c = cos_table + t * half;
  const float* s = sin_table + t * half;
  if (copy_rest)
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      if (j < offset || j >= offset + 2 * half) yi[j] = xi[j];
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const int64_t a = offset + (interleaved ? 2 * i : i);
    const int64_t b = offset + (interleaved ? 2 * i + 1 : i + half);
    float y0, y1;
    rotate_pair(to_f32(xi[a]), to_f32(xi[b]), c[i], s[i], y0, y1);
    yi[a] = from_f32<T>(y0);
    yi[b] = from_f32<T>(y1);
  }
}

// Vectorized: one thread per (row, item), items = half/8 groups of 8 pairs, then (copy_rest) the
// pass-through chunks of 8 dims. Group dims: group_dims (rope_vector.cuh). Same per-element f32
// formula as rope_kernel (rotate_pair), so the same results. In place (y = x, copy_rest false)
// only the rotary span is read and written: for MLA's q [T, H, 192] with a 64-dim rope part that
// is a third of the traffic of copying every head through.
template <typename T>
__global__ void rope_vec_kernel(const T* x, const float* cos_table, const float* sin_table,
                                uint32_t rows, uint32_t heads, uint32_t d, uint32_t offset,
                                uint32_t half, uint32_t segment, bool interleaved, bool copy_rest,
                                T* y) {
  const uint32_t groups = half / 8, items = groups + (copy_rest ? (d - 2 * half) / 8 : 0);
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < rows * items;
       i += gridDim.x * blockDim.x) {
    const uint32_t row = i / items, item = i % items;
    const T* xi = x + static_cast<int64_t>(row) * d;
    T* yi = y + static_cast<int64_t>(row) * d;
    if (item >= groups) {  // pass-through dims
      const uint32_t p = (item - groups) * 8, pos = p < offset ? p : p + 2 * half;
      RopeChunk<T> v;
      v.load(xi + pos);
      v.store(yi + pos);
      continue;
    }
    const uint32_t t = (row / heads) % segment, first = item * 8;
    TableChunk c, s;
    c.load(cos_table + static_cast<int64_t>(t) * half + first);
    s.load(sin_table + static_cast<int64_t>(t) * half + first);
    const GroupDims g = group_dims(offset, first, half, interleaved);
    RopeChunk<T> va, vb;
    va.load(xi + g.a);
    vb.load(xi + g.b);
    rotate_group(va, vb, c, s, interleaved);
    va.store(yi + g.a);
    vb.store(yi + g.b);
  }
}

}  // namespace

void CudaBackend::rope(const Tensor& x, const RopeTable& table, int64_t first_position,
                       int64_t offset, Tensor& y, int64_t segment_length) {
  OpTimer timer(profiler_, stream_, "rope");
  const RopeSizes sizes =
      check_rope(Device::kCUDA, x, table, first_position, offset, y, segment_length);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, d = sizes.d;
  const int64_t half = sizes.half, segment = sizes.segment;
  check_rope_tables(table, half, t_count * heads, "rope");
  if (t_count * heads == 0) return;
  const RopeRows table_rows = rope_rows(*this, table, first_position, t_count, segment);
  const Tensor &cos_rows = table_rows.cos, &sin_rows = table_rows.sin;
  dispatch_activation(y.dtype(), "rope", [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(x.data());
    T* out = static_cast<T*>(y.mutable_data());
    const int64_t rows = t_count * heads;
    const bool interleaved = table.pairing == model::RopePairing::kInterleaved;
    const bool copy_rest = in != out;
    if (rope_vectorizable(in, out, cos_rows.data<float>(), sin_rows.data<float>(), rows, d,
                          offset, half)) {
      const int64_t items = rows * (half / 8 + (copy_rest ? (d - 2 * half) / 8 : 0));
      rope_vec_kernel<T><<<grid_for(items), kThreads, 0, stream_>>>(
          in, cos_rows.data<float>(), sin_rows.data<float>(), static_cast<uint32_t>(rows),
          static_cast<uint32_t>(heads), static_cast<uint32_t>(d), static_cast<uint32_t>(offset),
          static_cast<uint32_t>(half), static_cast<uint32_t>(segment), interleaved, copy_rest,
          out);
      return;
    }
    rope_kernel<T><<<static_cast<unsigned>(rows), kRopeThreads, 0, stream_>>>(
        in, cos_rows.data<float>(), sin_rows.data<float>(), heads, d, offset, half, segment,
        interleaved, copy_rest, out);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "rope");
}

}  // namespace refinery::backend::cuda
