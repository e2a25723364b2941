// Backward of the element-wise and copy ops on the GPU: embedding, SwiGLU, sigmoid gate, column
// copies. All memory bound; math in f32, one rounding per gradient element (g += ... read,
// added, rounded once). Every gradient element is written by one thread, so no atomics anywhere.
// swiglu_backward moves 16-byte vectors (8 bf16 / 4 f32 per operand and thread; the scalar kernel
// takes the tail and misaligned views) with the per-element formula in one shared function, so
// both paths round identically; the scalar kernel alone issued 2-byte loads for 5 operands.
//
// embedding_backward is deterministic: the ids are downloaded once (one small synchronous copy,
// which also checks them), grouped by id on the host (CSR, positions in their original order), and
// one thread per (distinct id, column) adds that id's dy rows in position order.
#include <algorithm>
#include <numeric>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

template <typename T>
__global__ void embedding_backward_kernel(const T* dy, int64_t hidden, const int32_t* positions,
                                          const int32_t* offsets, const int32_t* ids,
                                          int64_t n_ids, float* dtable) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n_ids * hidden;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t u = i / hidden, c = i % hidden;
    float* out = dtable + static_cast<int64_t>(ids[u]) * hidden + c;
    float acc = *out;
    for (int32_t e = offsets[u]; e < offsets[u + 1]; ++e)
      acc += to_f32(dy[static_cast<int64_t>(positions[e]) * hidden + c]);
    *out = acc;
  }
}

// The SwiGLU gradient of one element, shared by both kernels below. The fused multiply-adds are
// explicit so that the rounding does not depend on how the compiler contracts each kernel: they
// are the ones nvcc chose for the original scalar kernel's expressions
//   dgate += d·u·(s·(1 + g·(1 − s))),   dup += d·(g·s),   s = σ(g),
// so results are bitwise those of the scalar kernel before vectorization.
__device__ inline float swiglu_sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }
__device__ inline float swiglu_dgate(float g, float u, float d, float s, float dgate) {
  return __fmaf_rn(d * u, s * __fmaf_rn(g, 1.0f - s, 1.0f), dgate);
}
__device__ inline float swiglu_dup(float g, float d, float s, float dup) {
  return __fmaf_rn(d, g * s, dup);
}

// Scalar path: any alignment, and the tail of the vectorized one (elements [begin, n)).
// accumulate false: the gradients are overwritten (their old values are not read; the result is
// the one of adding into zeros).
template <typename T>
__global__ void swiglu_backward_kernel(const T* gate, const T* up, const T* dy, int64_t begin,
                                       int64_t n, T* dgate, T* dup, bool accumulate) {
  for (int64_t i = begin + blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = to_f32(gate[i]), u = to_f32(up[i]), d = to_f32(dy[i]);
    const float s = swiglu_sigmoid(g);
    if (dgate != nullptr)
      dgate[i] = from_f32<T>(swiglu_dgate(g, u, d, s, accumulate ? to_f32(dgate[i]) : 0.0f));
    if (dup != nullptr)
      dup[i] = from_f32<T>(swiglu_dup(g, d, s, accumulate ? to_f32(dup[i]) : 0.0f));
  }
}

// Vectorized path: one 16-byte vector of each operand per thread and iteration (grid-stride over
// `vectors` vectors), one pass: gate, up, dy read once, dgate and dup read and written once.
template <typename T>
__global__ void swiglu_backward_vec_kernel(const uint4* gate, const uint4* up, const uint4* dy,
                                           int64_t vectors, uint4* dgate, uint4* dup,
                                           bool accumulate) {
  constexpr int kN = Vec16<T>::kN;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < vectors;
       i += int64_t{gridDim.x} * blockDim.x) {
    Vec16<T> g{gate[i]}, u{up[i]}, d{dy[i]}, og{}, ou{};
    og.raw = ou.raw = make_uint4(0u, 0u, 0u, 0u);  // zeros (0x0000 is 0 in f32 and bf16)
    if (dgate != nullptr && accumulate) og.raw = dgate[i];
    if (dup != nullptr && accumulate) ou.raw = dup[i];
    float vg[kN], vu[kN];
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      const float gj = g.get(j), s = swiglu_sigmoid(gj);
      vg[j] = swiglu_dgate(gj, u.get(j), d.get(j), s, og.get(j));
      vu[j] = swiglu_dup(gj, d.get(j), s, ou.get(j));
    }
    if (dgate != nullptr) {
      og.set(vg);
      dgate[i] = og.raw;
    }
    if (dup != nullptr) {
      ou.set(vu);
      dup[i] = ou.raw;
    }
  }
}

// One block per row: dx[t, :] += σ(g[t]) · dy[t, :];  dg[t] += σ'(g[t]) · Σ_d dy[t, d] · x[t, d].
template <typename T>
__global__ void sigmoid_gate_backward_kernel(const T* x, const T* g, const T* dy, int64_t d,
                                             T* dx, T* dg) {
  __shared__ float partial[kThreads / 32];
  const int64_t row = blockIdx.x;
  const float gv = to_f32(g[row]);
  const float s = 1.0f / (1.0f + expf(-gv));
  float dot = 0.0f;
  for (int64_t i = threadIdx.x; i < d; i += blockDim.x) {
    const float dyv = to_f32(dy[row * d + i]);
    if (dg != nullptr) dot += dyv * to_f32(x[row * d + i]);
    if (dx != nullptr) dx[row * d + i] = from_f32<T>(to_f32(dx[row * d + i]) + s * dyv);
  }
  if (dg == nullptr) return;
  for (int o = 16; o > 0; o /= 2) dot += __shfl_down_sync(0xffffffffu, dot, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = dot;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
    dg[row] = from_f32<T>(to_f32(dg[row]) + s * (1.0f - s) * total);
  }
}

// dsrc[r, j] += Σ_{i < n} ddst[r·n + i, j] (pointers already offset to the first column).
template <typename T>
__global__ void copy_columns_backward_kernel(const T* ddst, int64_t dst_stride, T* dsrc,
                                             int64_t src_stride, int64_t src_rows, int64_t width,
                                             int64_t repeat) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < src_rows * width;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / width, j = i % width;
    T* out = dsrc + r * src_stride + j;
    float acc = to_f32(*out);
    for (int64_t k = 0; k < repeat; ++k) acc += to_f32(ddst[(r * repeat + k) * dst_stride + j]);
    *out = from_f32<T>(acc);
  }
}

}  // namespace

void CudaBackend::embedding_backward(const Tensor& ids, const Tensor& dy, Tensor& dtable) {
  OpTimer timer(profiler_, stream_, "embedding_backward");
  if (!dtable.defined()) return;
  REFINERY_CHECK(ids.dtype() == DType::kI32 && ids.ndim() == 1,
                 "embedding_backward ids: expected i32 [T], found ", ids.describe());
  REFINERY_CHECK(dtable.ndim() == 2, "embedding_backward: dtable must be f32 [vocab, hidden], found ",
                 dtable.describe());
  const int64_t n = ids.numel(), vocab = dtable.size(0), hidden = dtable.size(1);
  require_f32(dtable, {vocab, hidden}, "embedding_backward dtable");
  backend::require_float(Device::kCUDA, dy, {n, hidden}, "embedding_backward dy");
  REFINERY_CHECK(n < (int64_t{1} << 31), "embedding_backward: too many tokens: ", n);
  const std::vector<int32_t> host_ids = host_i32(ids);
  for (int64_t t = 0; t < n; ++t)
    if (host_ids[t] < 0 || host_ids[t] >= vocab)
      throw_user_error("embedding_backward: token id ", host_ids[t], " at position ", t,
                       " is outside the vocabulary [0, ", vocab,
                       "); the input was made with another tokenizer or model");
  if (n == 0 || hidden == 0) return;
  // CSR by id: positions of each id in their original order (stable sort).
  std::vector<int32_t> positions(static_cast<std::size_t>(n));
  std::iota(positions.begin(), positions.end(), 0);
  std::stable_sort(positions.begin(), positions.end(),
                   [&](int32_t a, int32_t b) { return host_ids[a] < host_ids[b]; });
  std::vector<int32_t> offsets, distinct;
  for (int64_t i = 0; i < n; ++i)
    if (i == 0 || host_ids[positions[i]] != host_ids[positions[i - 1]]) {
      offsets.push_back(static_cast<int32_t>(i));
      distinct.push_back(host_ids[positions[i]]);
    }
  offsets.push_back(static_cast<int32_t>(n));
  const Tensor positions_d = device_i32(positions), offsets_d = device_i32(offsets),
               distinct_d = device_i32(distinct);
  const auto n_ids = static_cast<int64_t>(distinct.size());
  dispatch_activation(dy.dtype(), "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    embedding_backward_kernel<T><<<grid_for(n_ids * hidden), kThreads, 0, stream_>>>(
        static_cast<const T*>(dy.data()), hidden, positions_d.data<int32_t>(),
        offsets_d.data<int32_t>(), distinct_d.data<int32_t>(), n_ids,
        dtable.mutable_data<float>());
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "embedding_backward");
}

void CudaBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy,
                                  Tensor& dgate, Tensor& dup, GradWrite write) {
  OpTimer timer(profiler_, stream_, "swiglu_backward");
  const bool accumulate = write == GradWrite::kAdd;
  check_swiglu(Device::kCUDA, gate, up, dy);
  for (const Tensor* g : {&dgate, &dup})
    if (g->defined()) {
      backend::require_float(Device::kCUDA, *g, dy.shape(), "swiglu_backward gradient");
      require_same_dtype(*g, dy, "swiglu_backward");
    }
  const int64_t n = dy.numel();
  if (n == 0 || (!dgate.defined() && !dup.defined())) return;
  dispatch_activation(dy.dtype(), "swiglu_backward", [&](auto tag) {
    using T = decltype(tag);
    const T* gp = static_cast<const T*>(gate.data());
    const T* up_p = static_cast<const T*>(up.data());
    const T* dyp = static_cast<const T*>(dy.data());
    T* dgp = dgate.defined() ? static_cast<T*>(dgate.mutable_data()) : nullptr;
    T* dup_p = dup.defined() ? static_cast<T*>(dup.mutable_data()) : nullptr;
    const bool vec = aligned16(gp) && aligned16(up_p) && aligned16(dyp) &&
                     (dgp == nullptr || aligned16(dgp)) && (dup_p == nullptr || aligned16(dup_p));
    // The vectorized kernel takes the whole 16-byte vectors, the scalar one the rest (all of it
    // when a pointer is misaligned).
    const int64_t vectors = vec ? n / Vec16<T>::kN : 0, done = vectors * Vec16<T>::kN;
    if (vectors > 0)
      swiglu_backward_vec_kernel<T><<<grid_for(vectors), kThreads, 0, stream_>>>(
          reinterpret_cast<const uint4*>(gp), reinterpret_cast<const uint4*>(up_p),
          reinterpret_cast<const uint4*>(dyp), vectors, reinterpret_cast<uint4*>(dgp),
          reinterpret_cast<uint4*>(dup_p), accumulate);
    if (done < n)
      swiglu_backward_kernel<T><<<grid_for(n - done), kThreads, 0, stream_>>>(
          gp, up_p, dyp, done, n, dgp, dup_p, accumulate);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "swiglu_backward");
}

void CudaBackend::sigmoid_gate_backward(const Tensor& x, const Tensor& g, const Tensor& dy,
                                        Tensor& dx, Tensor& dg) {
  OpTimer timer(profiler_, stream_, "sigmoid_gate_backward");
  const RowsCols sizes = check_sigmoid_gate(Device::kCUDA, x, g, dy);
  const int64_t rows = sizes.rows, d = sizes.cols;
  if (dx.defined()) {
    backend::require_float(Device::kCUDA, dx, {rows, d}, "sigmoid_gate_backward dx");
    require_same_dtype(dx, dy, "sigmoid_gate_backward");
  }
  if (dg.defined()) {
    backend::require_float(Device::kCUDA, dg, {rows, 1}, "sigmoid_gate_backward dg");
    require_same_dtype(dg, dy, "sigmoid_gate_backward");
  }
  REFINERY_CHECK(rows < (int64_t{1} << 31), "sigmoid_gate_backward: too many rows: ", rows);
  if (rows == 0 || (!dx.defined() && !dg.defined())) return;
  dispatch_activation(dy.dtype(), "sigmoid_gate_backward", [&](auto tag) {
    using T = decltype(tag);
    sigmoid_gate_backward_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream_>>>(
        static_cast<const T*>(x.data()), static_cast<const T*>(g.data()),
        static_cast<const T*>(dy.data()), d,
        dx.defined() ? static_cast<T*>(dx.mutable_data()) : nullptr,
        dg.defined() ? static_cast<T*>(dg.mutable_data()) : nullptr);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "sigmoid_gate_backward");
}

void CudaBackend::copy_columns_backward(const Tensor& ddst, int64_t dst_col, Tensor& dsrc,
                                        int64_t src_col, int64_t width) {
  OpTimer timer(profiler_, stream_, "copy_columns_backward");
  if (!dsrc.defined()) return;
  // The forward's shapes: dsrc is the source [R, Cs], ddst the destination [R·n, Cd].
  const CopyColumnsSizes sizes =
      check_copy_columns(Device::kCUDA, dsrc, src_col, ddst, dst_col, width);
  const int64_t src_rows = dsrc.size(0), n = sizes.repeat;
  if (src_rows * width == 0) return;
  dispatch_activation(dsrc.dtype(), "copy_columns_backward", [&](auto tag) {
    using T = decltype(tag);
    copy_columns_backward_kernel<T><<<grid_for(src_rows * width), kThreads, 0, stream_>>>(
        static_cast<const T*>(ddst.data()) + dst_col, sizes.dst_cols,
        static_cast<T*>(dsrc.mutable_data()) + src_col, sizes.src_cols, src_rows, width, n);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "copy_columns_backward");
}

}  // namespace refinery::backend::cuda
