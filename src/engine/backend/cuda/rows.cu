// Row gather and weighted scatter-add on the GPU (MoE permute / un-permute).
//
// Both check their row indices on the host first (one small synchronous download), so a bad index
// is an error, never an out-of-bounds device access. scatter_add_rows is deterministic: the host
// groups the entries by target row (CSR, entries in their original order), and one thread per
// (target row, column) adds them in that order, exactly the CPU's summation order; no atomics.
// Memory bound.
#include <algorithm>
#include <numeric>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

template <typename T>
__global__ void gather_rows_kernel(const T* x, const int32_t* rows, int64_t n, int64_t d, T* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n * d;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / d, c = i % d;
    y[i] = x[static_cast<int64_t>(rows[r]) * d + c];
  }
}

template <typename T>
__global__ void scatter_add_csr_kernel(const T* x, int64_t d, const int32_t* entry,
                                       const float* scale, const int32_t* offsets,
                                       const int32_t* targets, int64_t n_targets, T* y) {
  for (int64_t u = blockIdx.y * int64_t{blockDim.y} + threadIdx.y; u < n_targets;
       u += int64_t{gridDim.y} * blockDim.y) {
    T* const y_row = y + static_cast<int64_t>(targets[u]) * d;
    const int32_t first = offsets[u], last = offsets[u + 1];
    for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < d;
         c += int64_t{gridDim.x} * blockDim.x) {
      float acc = to_f32(y_row[c]);
      for (int32_t e = first; e < last; ++e) {
        const int64_t src = entry[e];
        acc += scale[src] * to_f32(x[src * d + c]);
      }
      y_row[c] = from_f32<T>(acc);
    }
  }
}

// The same with 16-byte vectors: thread (u, c) handles columns 8c .. 8c + 7 (bf16) or 4c .. 4c + 3
// (f32) of target u; each element is still y + Σ_e scale · x in f32 in entry order, so the results
// are bit-identical to scatter_add_csr_kernel's. Needs d a multiple of Vec16<T>::kN and 16-byte
// aligned x and y. Why: the MoE un-permute reads N = T·k rows of [N, hidden] (201 MB at V2-Lite's
// batch of 8192 tokens); 2-byte loads left it well below copy bandwidth.
template <typename T>
__global__ void scatter_add_csr_vec_kernel(const T* x, int64_t d, const int32_t* entry,
                                           const float* scale, const int32_t* offsets,
                                           const int32_t* targets, int64_t n_targets, T* y) {
  using V = Vec16<T>;
  const int64_t vectors = d / V::kN;
  for (int64_t u = blockIdx.y * int64_t{blockDim.y} + threadIdx.y; u < n_targets;
       u += int64_t{gridDim.y} * blockDim.y) {
    T* const y_row = y + static_cast<int64_t>(targets[u]) * d;
    const int32_t first = offsets[u], last = offsets[u + 1];
    for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < vectors;
         c += int64_t{gridDim.x} * blockDim.x) {
      V out;
      out.load(y_row + c * V::kN);
      float acc[V::kN];
#pragma unroll
      for (int j = 0; j < V::kN; ++j) acc[j] = out.get(j);
      for (int32_t e = first; e < last; ++e) {
        const int64_t src = entry[e];
        const float w = scale[src];
        V in;
        in.load(x + src * d + c * V::kN);
#pragma unroll
        for (int j = 0; j < V::kN; ++j) acc[j] += w * in.get(j);
      }
      out.set(acc);
      out.store(y_row + c * V::kN);
    }
  }
}

}  // namespace

void CudaBackend::scatter_add_csr(const Tensor& x, const int32_t* entry, const float* scale,
                                  const int32_t* offsets, const int32_t* targets,
                                  int64_t n_targets, Tensor& y, const char* op) {
  const int64_t d = x.size(1);
  if (n_targets * d == 0) return;
  dispatch_activation(y.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    constexpr int kN = Vec16<T>::kN;
    if (d % kN == 0 && aligned16(x.data()) && aligned16(y.data())) {
      const RowColumnLaunch launch = row_column_launch(n_targets, d / kN);
      scatter_add_csr_vec_kernel<T><<<launch.grid, launch.block, 0, stream_>>>(
          static_cast<const T*>(x.data()), d, entry, scale, offsets, targets, n_targets,
          static_cast<T*>(y.mutable_data()));
      return;
    }
    const RowColumnLaunch launch = row_column_launch(n_targets, d);
    scatter_add_csr_kernel<T><<<launch.grid, launch.block, 0, stream_>>>(
        static_cast<const T*>(x.data()), d, entry, scale, offsets, targets, n_targets,
        static_cast<T*>(y.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, op);
}

void CudaBackend::gather_rows_device(const Tensor& x, const int32_t* rows, int64_t n, Tensor& y,
                                     const char* op) {
  const int64_t d = x.size(1);
  if (n * d == 0) return;
  dispatch_activation(y.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    gather_rows_kernel<T><<<grid_for(n * d), kThreads, 0, stream_>>>(
        static_cast<const T*>(x.data()), rows, n, d, static_cast<T*>(y.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, op);
}

void CudaBackend::gather_rows(const Tensor& x, const Tensor& rows, Tensor& y) {
  OpTimer timer(profiler_, stream_, "gather_rows");
  const RowsSizes sizes = check_gather_rows(Device::kCUDA, x, rows, y);
  const int64_t n = sizes.n, t_count = sizes.t_count, d = sizes.d;
  const std::vector<int32_t> r = host_i32(rows);
  for (int64_t i = 0; i < n; ++i)
    REFINERY_CHECK(r[i] >= 0 && r[i] < t_count, "gather_rows: row ", r[i], " of ", t_count);
  (void)d;
  gather_rows_device(x, rows.data<int32_t>(), n, y, "gather_rows");
}

void CudaBackend::scatter_add_rows(const Tensor& x, const Tensor& rows, const Tensor& scale,
                                   Tensor& y) {
  OpTimer timer(profiler_, stream_, "scatter_add_rows");
  const RowsSizes sizes = check_scatter_add_rows(Device::kCUDA, x, rows, scale, y);
  const int64_t n = sizes.n, d = sizes.d, t_count = sizes.t_count;
  const std::vector<int32_t> r = host_i32(rows);
  for (int64_t i = 0; i < n; ++i)
    REFINERY_CHECK(r[i] >= 0 && r[i] < t_count, "scatter_add_rows: row ", r[i], " of ", t_count);
  if (n == 0 || d == 0) return;
  // CSR by target row: entries of each target in their original order (stable sort).
  std::vector<int32_t> entry(static_cast<std::size_t>(n));
  std::iota(entry.begin(), entry.end(), 0);
  std::stable_sort(entry.begin(), entry.end(), [&](int32_t a, int32_t b) { return r[a] < r[b]; });
  std::vector<int32_t> offsets{0}, targets;
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0 && r[entry[i]] != r[entry[i - 1]]) {
      offsets.push_back(static_cast<int32_t>(i));
    }
    if (i == 0 || r[entry[i]] != r[entry[i - 1]]) targets.push_back(r[entry[i]]);
  }
  offsets.push_back(static_cast<int32_t>(n));
  const Tensor entry_d = device_i32(entry), offsets_d = device_i32(offsets),
               targets_d = device_i32(targets);
  scatter_add_csr(x, entry_d.data<int32_t>(), scale.data<float>(), offsets_d.data<int32_t>(),
                  targets_d.data<int32_t>(), static_cast<int64_t>(targets.size()), y,
                  "scatter_add_rows");
}

}  // namespace refinery::backend::cuda
