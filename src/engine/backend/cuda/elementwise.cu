// Element-wise and copy ops on the GPU: embedding lookup, residual add, SwiGLU, sigmoid gate,
// column copies. All memory bound: grid-stride loops, one element per thread step, 64-bit indices.
// Templated on the activation type T (f32 or bf16; math in f32, one rounding per output). Each
// output element depends only on the same element of the inputs (or on a row scalar), so outputs
// may alias inputs where the interface allows it.
#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

template <typename T>
__global__ void embedding_kernel(const int32_t* ids, const void* table, ElementType type, int64_t n,
                                 int64_t hidden, T* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n * hidden;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / hidden, c = i % hidden;
    y[i] = from_f32<T>(load_f32(table, type, static_cast<int64_t>(ids[t]) * hidden + c));
  }
}

template <typename T, typename B>
__global__ void add_kernel(const T* a, const B* b, int64_t n, T* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
}

__device__ inline float swiglu_value(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Scalar path: elements [begin, n) (the tail of the vectorized one, or all of a misaligned call).
template <typename T>
__global__ void swiglu_kernel(const T* gate, const T* up, int64_t begin, int64_t n, T* y) {
  for (int64_t i = begin + blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = from_f32<T>(swiglu_value(to_f32(gate[i]), to_f32(up[i])));
}

// 16-byte vectors of every operand (the scalar kernel issued 2-byte loads: half of HBM bandwidth).
template <typename T>
__global__ void swiglu_vec_kernel(const uint4* gate, const uint4* up, int64_t vectors, uint4* y) {
  constexpr int kN = Vec16<T>::kN;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < vectors;
       i += int64_t{gridDim.x} * blockDim.x) {
    const Vec16<T> g{gate[i]}, u{up[i]};
    float v[kN];
#pragma unroll
    for (int j = 0; j < kN; ++j) v[j] = swiglu_value(g.get(j), u.get(j));
    Vec16<T> out{};
    out.set(v);
    y[i] = out.raw;
  }
}

template <typename T>
__global__ void sigmoid_gate_kernel(const T* x, const T* g, int64_t rows, int64_t d, T* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * d;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float s = 1.0f / (1.0f + expf(-to_f32(g[i / d])));
    y[i] = from_f32<T>(s * to_f32(x[i]));
  }
}

// dst[r, j] = src[r / repeat, j] for j < width; V elements move as one 16-byte vector when the
// caller checked the alignment (V = 16 / sizeof(T)), else V = 1.
template <typename T, int V>
__global__ void copy_columns_kernel(const T* src, int64_t src_stride, T* dst, int64_t dst_stride,
                                    int64_t rows, int64_t width, int64_t repeat) {
  const int64_t vectors = width / V;
  for (int64_t r = blockIdx.y * int64_t{blockDim.y} + threadIdx.y; r < rows;
       r += int64_t{gridDim.y} * blockDim.y) {
    const T* s = src + (r / repeat) * src_stride;
    T* d = dst + r * dst_stride;
    for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < vectors;
         j += int64_t{gridDim.x} * blockDim.x) {
      if constexpr (V == 1)
        d[j] = s[j];
      else
        reinterpret_cast<uint4*>(d)[j] = reinterpret_cast<const uint4*>(s)[j];
    }
  }
}

}  // namespace

// Ids are checked on the host before the launch (one small synchronous download), so a bad id is
// a user error naming its position rather than a device fault.
void CudaBackend::embedding(const Tensor& ids, const Tensor& table, Tensor& y) {
  OpTimer timer(profiler_, stream_, "embedding");
  REFINERY_CHECK(table.ndim() == 2, "embedding table must be 2-D, found ", table.describe());
  const int64_t n = ids.numel(), vocab = table.size(0), hidden = table.size(1);
  REFINERY_CHECK(ids.dtype() == DType::kI32 && ids.ndim() == 1,
                 "embedding ids: expected i32 [T], found ", ids.describe());
  backend::require_float(Device::kCUDA, y, {n, hidden}, "embedding output");
  const std::vector<int32_t> host_ids = host_i32(ids);
  for (int64_t t = 0; t < n; ++t)
    if (host_ids[t] < 0 || host_ids[t] >= vocab)
      throw_user_error("token id ", host_ids[t], " at position ", t,
                       " is outside the vocabulary [0, ", vocab,
                       "); the input was made with another tokenizer or model");
  if (n == 0 || hidden == 0) return;
  const Tensor device_ids = on_device(ids);
  const Tensor device_table = on_device(table);
  dispatch_activation(y.dtype(), "embedding", [&](auto tag) {
    using T = decltype(tag);
    embedding_kernel<T><<<grid_for(n * hidden), kThreads, 0, stream_>>>(
        device_ids.data<int32_t>(), device_table.data(),
        element_type(device_table.dtype(), "embedding table"), n, hidden,
        static_cast<T*>(y.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "embedding");
}

void CudaBackend::add(const Tensor& a, const Tensor& b, Tensor& y) {
  OpTimer timer(profiler_, stream_, "add");
  check_add(Device::kCUDA, a, b, y);
  backend::require_float(Device::kCUDA, y, y.shape(), "add y");
  const int64_t n = y.numel();
  if (n == 0) return;
  dispatch_activation(y.dtype(), "add", [&](auto tag) {
    using T = decltype(tag);
    dispatch_activation(b.dtype(), "add", [&](auto b_tag) {
      using B = decltype(b_tag);
      add_kernel<T, B><<<grid_for(n), kThreads, 0, stream_>>>(
          static_cast<const T*>(a.data()), static_cast<const B*>(b.data()), n,
          static_cast<T*>(y.mutable_data()));
    });
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "add");
}

void CudaBackend::swiglu(const Tensor& gate, const Tensor& up, Tensor& y) {
  OpTimer timer(profiler_, stream_, "swiglu");
  check_swiglu(Device::kCUDA, gate, up, y);
  backend::require_float(Device::kCUDA, y, y.shape(), "swiglu y");
  const int64_t n = y.numel();
  if (n == 0) return;
  dispatch_activation(y.dtype(), "swiglu", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(gate.data());
    const T* upp = static_cast<const T*>(up.data());
    T* yp = static_cast<T*>(y.mutable_data());
    const bool vec = aligned16(gp) && aligned16(upp) && aligned16(yp);
    const int64_t vectors = vec ? n / Vec16<T>::kN : 0, done = vectors * Vec16<T>::kN;
    if (vectors > 0)
      swiglu_vec_kernel<T><<<grid_for(vectors), kThreads, 0, stream_>>>(
          reinterpret_cast<const uint4*>(gp), reinterpret_cast<const uint4*>(upp), vectors,
          reinterpret_cast<uint4*>(yp));
    if (done < n)
      swiglu_kernel<T><<<grid_for(n - done), kThreads, 0, stream_>>>(gp, upp, done, n, yp);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "swiglu");
}

void CudaBackend::sigmoid_gate(const Tensor& x, const Tensor& g, Tensor& y) {
  OpTimer timer(profiler_, stream_, "sigmoid_gate");
  const RowsCols sizes = check_sigmoid_gate(Device::kCUDA, x, g, y);
  const int64_t rows = sizes.rows, d = sizes.cols;
  if (rows * d == 0) return;
  dispatch_activation(y.dtype(), "sigmoid_gate", [&](auto tag) {
    using T = decltype(tag);
    sigmoid_gate_kernel<T><<<grid_for(rows * d), kThreads, 0, stream_>>>(
        static_cast<const T*>(x.data()), static_cast<const T*>(g.data()), rows, d,
        static_cast<T*>(y.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "sigmoid_gate");
}

void CudaBackend::copy_columns(const Tensor& src, int64_t src_col, Tensor& dst, int64_t dst_col,
                               int64_t width) {
  OpTimer timer(profiler_, stream_, "copy_columns");
  const CopyColumnsSizes sizes = check_copy_columns(Device::kCUDA, src, src_col, dst, dst_col, width);
  const int64_t rows = sizes.rows, cs = sizes.src_cols, cd = sizes.dst_cols, n = sizes.repeat;
  if (rows * width == 0) return;
  dispatch_activation(dst.dtype(), "copy_columns", [&](auto tag) {
    using T = decltype(tag);
    const T* from = static_cast<const T*>(src.data()) + src_col;
    T* to = static_cast<T*>(dst.mutable_data()) + dst_col;
    constexpr int64_t kV = 16 / sizeof(T);  // elements per 16-byte vector
    const bool vector = width % kV == 0 && cs % kV == 0 && cd % kV == 0 &&
                        reinterpret_cast<uintptr_t>(from) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(to) % 16 == 0;
    const RowColumnLaunch launch = row_column_launch(rows, vector ? width / kV : width);
    if (vector)
      copy_columns_kernel<T, kV><<<launch.grid, launch.block, 0, stream_>>>(from, cs, to, cd, rows,
                                                                            width, n);
    else
      copy_columns_kernel<T, 1><<<launch.grid, launch.block, 0, stream_>>>(from, cs, to, cd, rows,
                                                                           width, n);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "copy_columns");
}

}  // namespace refinery::backend::cuda
