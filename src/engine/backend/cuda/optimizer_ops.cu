// The optimizer's ops on the GPU: adamw_update, sum_squares (the global gradient norm), their
// multi-tensor forms, convert.
//
// adamw_update must be BITWISE equal to the CPU op (train::AdamW::step's element arithmetic), so
// every float operation is an explicit round-to-nearest intrinsic (__fmul_rn, __fadd_rn,
// __fdiv_rn, __fsqrt_rn, __fmaf_rn): nvcc may not contract or reassociate them, whatever
// -fmad / --use_fast_math say (the build passes neither; see CMakeLists.txt). The lerp is the
// documented fma; v = fma(omb2·g, g, v·beta2) is written as an explicit fma on both sides (left to
// the compiler, g++ contracts it under -march=x86-64-v3 and not without, so the CPU result would
// depend on build flags).
//
// sum_squares: a fixed grid of kSumBlocks blocks (independent of the device), each thread sums x²
// in double over a fixed grid-stride element set, the block reduces in a fixed tree, and one
// block adds the block partials in order: the same double for any run. Returns on the host
// (synchronizes).
//
// The multi-tensor forms (adamw_update_many, sum_squares_many) run one kernel over all tensors:
// the host builds a table of the tensors (pointers, sizes, dtypes, the first chunk of each) and
// uploads it with one stream-ordered copy into a pool-allocated buffer (device_memory.cu: no
// cudaMalloc after warm-up); each tensor is cut into fixed chunks (a chunk never straddles two
// tensors) and blocks walk the concatenated chunk list, finding a chunk's tensor by binary search
// of the table. adamw_update_many runs adamw_element, the element function of adamw_kernel, so
// its results are bitwise those of adamw_update per tensor. sum_squares_many writes one double
// partial per chunk (threads stride the chunk in a fixed pattern, then a fixed tree), and one
// block of kFinalThreads adds the partials in a fixed pattern: chunk size and block widths are
// constants, so the result depends on neither the grid size nor the device, and is the same
// double on every run; it differs from Σ_k sum_squares(tensor k) by rounding only. One download.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "engine/backend/cuda/alignment.hpp"
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr unsigned kSumBlocks = 1024;
constexpr int kSumThreads = 256;

// Elements per chunk of the multi-tensor kernels (fixed: the partials of sum_squares_many, and
// so its result, depend on it).
constexpr int64_t kAdamChunk = 4096;
constexpr int64_t kSumChunk = 32768;
// Threads of the one block that adds the chunk partials (fixed, as the chunk size).
constexpr int kFinalThreads = 1024;
// Grid cap of the multi-tensor kernels (blocks loop over the chunks; no result depends on it).
constexpr int64_t kManyMaxBlocks = int64_t{1} << 16;

// Element i of one AdamW update (backend.hpp adamw_update); stores master, exp_avg, exp_avg_sq
// and returns the new master weight. Shared by adamw_kernel and adamw_many_kernel, so that both
// perform the same rounded operations.
// The update of one element from its loaded values: w (master), m (exp_avg), v (exp_avg_sq) in,
// the new values out. Shared by the scalar and the vectorized paths (the same rounded operations).
__device__ __forceinline__ void adamw_math(float grad, float& w, float& m, float& v, bool decay,
                                           const AdamWScalars& s) {
  const float g = __fmul_rn(grad, s.grad_scale);
  if (decay) w = __fmul_rn(w, s.decay_factor);
  const float m0 = m;
  m = __fmaf_rn(s.lerp_weight, __fsub_rn(g, m0), m0);
  v = __fmul_rn(v, s.beta2);
  v = __fmaf_rn(__fmul_rn(s.one_minus_beta2, g), g, v);  // as the CPU: std::fma
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
  w = __fadd_rn(w, __fdiv_rn(__fmul_rn(s.neg_step_size, m), denom));
}

__device__ __forceinline__ float adamw_element(float* master, const float* grad, float* exp_avg,
                                               float* exp_avg_sq, int64_t i, bool decay,
                                               const AdamWScalars& s) {
  float w = master[i], m = exp_avg[i], v = exp_avg_sq[i];
  adamw_math(grad[i], w, m, v, decay, s);
  master[i] = w;
  exp_avg[i] = m;
  exp_avg_sq[i] = v;
  return w;
}

template <typename C>
__global__ void adamw_kernel(float* master, const float* grad, float* exp_avg, float* exp_avg_sq,
                             AdamWScalars s, int64_t n, C* compute) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float w = adamw_element(master, grad, exp_avg, exp_avg_sq, i, s.decay, s);
    if (compute != nullptr) compute[i] = from_f32<C>(w);
  }
}

// One tensor of adamw_update_many (the uploaded table; tensors of 0 elements are left out).
struct AdamWEntry {
  float* master;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  void* compute;        // nullptr: no compute copy
  int64_t n;
  int64_t first_chunk;  // chunks (of kAdamChunk) of the entries before this one
  int32_t compute_bf16;  // 1: compute is bf16, 0: f32
  int32_t decay;
};

// One tensor of sum_squares_many.
struct SumEntry {
  const void* data;
  int64_t n;
  int64_t first_chunk;  // chunks (of kSumChunk) of the entries before this one
  int32_t bf16;         // 1: bf16, 0: f32
  int32_t unused;
};

// The entry holding global chunk c: the last one with first_chunk <= c (entries ascending,
// entry 0 starts at chunk 0). Every thread of a block searches the same c (broadcast loads).
template <typename E>
__device__ __forceinline__ int entry_of_chunk(const E* table, int count, int64_t c) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table[mid].first_chunk <= c)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Four elements [i, i + 4) of one entry by 16-byte loads and stores (8-byte for a bf16 compute
// copy): the scalar loop kept ~32 KB in flight per SM, 85% of copy bandwidth on the 1.4B student.
__device__ __forceinline__ void adamw_four(const AdamWEntry& e, int64_t i, const AdamWScalars& s) {
  const float4 g = *reinterpret_cast<const float4*>(e.grad + i);
  float4 w = *reinterpret_cast<const float4*>(e.master + i);
  float4 m = *reinterpret_cast<const float4*>(e.exp_avg + i);
  float4 v = *reinterpret_cast<const float4*>(e.exp_avg_sq + i);
  const bool decay = e.decay != 0;
  adamw_math(g.x, w.x, m.x, v.x, decay, s);
  adamw_math(g.y, w.y, m.y, v.y, decay, s);
  adamw_math(g.z, w.z, m.z, v.z, decay, s);
  adamw_math(g.w, w.w, m.w, v.w, decay, s);
  *reinterpret_cast<float4*>(e.master + i) = w;
  *reinterpret_cast<float4*>(e.exp_avg + i) = m;
  *reinterpret_cast<float4*>(e.exp_avg_sq + i) = v;
  if (e.compute == nullptr) return;
  if (e.compute_bf16 != 0) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(w.x, w.y), hi = __floats2bfloat162_rn(w.z, w.w);
    *reinterpret_cast<uint2*>(static_cast<__nv_bfloat16*>(e.compute) + i) =
        make_uint2(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi));
  } else {
    *reinterpret_cast<float4*>(static_cast<float*>(e.compute) + i) = w;
  }
}

__device__ __forceinline__ bool adamw_vectorizable(const AdamWEntry& e) {
  const auto bits = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  const uintptr_t f32 = bits(e.master) | bits(e.grad) | bits(e.exp_avg) | bits(e.exp_avg_sq);
  const uintptr_t c = e.compute == nullptr ? 0 : bits(e.compute);
  return f32 % 16 == 0 && c % (e.compute_bf16 != 0 ? 8 : 16) == 0;
}

__global__ void adamw_many_kernel(const AdamWEntry* table, int count, int64_t chunks,
                                  AdamWScalars s) {
  static_assert(kAdamChunk % 4 == 0, "chunks start on 4-element boundaries");
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const AdamWEntry e = table[entry_of_chunk(table, count, c)];
    const int64_t begin = (c - e.first_chunk) * kAdamChunk;
    const int64_t end = min(e.n, begin + kAdamChunk);
    int64_t tail = begin;  // first element the scalar loop below takes
    if (adamw_vectorizable(e)) {
      const int64_t whole = begin + (end - begin) / 4 * 4;
      for (int64_t i = begin + 4 * int64_t{threadIdx.x}; i < whole; i += 4 * int64_t{blockDim.x})
        adamw_four(e, i, s);
      tail = whole;
    }
    for (int64_t i = tail + threadIdx.x; i < end; i += blockDim.x) {
      const float w = adamw_element(e.master, e.grad, e.exp_avg, e.exp_avg_sq, i, e.decay != 0, s);
      if (e.compute == nullptr) continue;
      if (e.compute_bf16 != 0)
        static_cast<__nv_bfloat16*>(e.compute)[i] = from_f32<__nv_bfloat16>(w);
      else
        static_cast<float*>(e.compute)[i] = w;
    }
  }
}

// partial[c] = Σ x² over chunk c, in double: thread t sums elements t, t + kSumThreads, ... of
// the chunk in order, then a fixed tree over the block (blockDim.x == kSumThreads).
__global__ void sum_squares_many_kernel(const SumEntry* table, int count, int64_t chunks,
                                        double* partial) {
  __shared__ double scratch[kSumThreads];
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    const SumEntry e = table[entry_of_chunk(table, count, c)];
    const int64_t begin = (c - e.first_chunk) * kSumChunk;
    const int64_t end = min(e.n, begin + kSumChunk);
    double acc = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += kSumThreads) {
      const double v = e.bf16 != 0 ? to_f32(static_cast<const __nv_bfloat16*>(e.data)[i])
                                   : static_cast<const float*>(e.data)[i];
      acc += v * v;
    }
    scratch[threadIdx.x] = acc;
    __syncthreads();
    for (int half = kSumThreads / 2; half > 0; half /= 2) {
      if (static_cast<int>(threadIdx.x) < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[c] = scratch[0];
    __syncthreads();  // scratch is reused by the next chunk
  }
}

// *result = Σ_c partial[c] for c < parts, one block of kFinalThreads: thread t adds partials
// t, t + kFinalThreads, ... in order, then a fixed tree.
__global__ void sum_partials_many_kernel(const double* partial, int64_t parts, double* result) {
  __shared__ double scratch[kFinalThreads];
  double acc = 0.0;
  for (int64_t c = threadIdx.x; c < parts; c += kFinalThreads) acc += partial[c];
  scratch[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kFinalThreads / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *result = scratch[0];
}

// A device copy of a host table (stream-ordered on the backend's stream; the copy from pageable
// memory has captured `entries` when it returns). The buffer is freed, stream-ordered, with the
// returned tensor after the kernels that read it.
template <typename E>
Tensor device_table(CudaBackend& be, const std::vector<E>& entries) {
  const std::size_t bytes = entries.size() * sizeof(E);
  Tensor table = be.empty(DType::kU8, {static_cast<int64_t>(bytes)});
  REFINERY_CUDA_CHECK(cudaMemcpyAsync(table.mutable_data(), entries.data(), bytes,
                                      cudaMemcpyHostToDevice, be.stream()));
  return table;
}

unsigned many_grid(int64_t chunks) {
  return static_cast<unsigned>(std::clamp<int64_t>(chunks, 1, kManyMaxBlocks));
}

// Σ x² per block, or Σ (x − y)² when y is not null (sum_squared_difference).
template <typename T>
__global__ void sum_squares_partial_kernel(const T* x, const T* y, int64_t n, double* partial) {
  __shared__ double scratch[kSumThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const double v = y ? static_cast<double>(to_f32(x[i])) - to_f32(y[i]) : to_f32(x[i]);
    acc += v * v;
  }
  scratch[threadIdx.x] = acc;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = scratch[0];
}

__global__ void sum_partials_kernel(const double* partial, unsigned parts, double* result) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double total = 0.0;
  for (unsigned b = 0; b < parts; ++b) total += partial[b];
  *result = total;
}

__device__ inline void store(float* p, float v) { *p = v; }
__device__ inline void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ inline void store(__half* p, float v) { *p = __float2half_rn(v); }

template <typename D>
__global__ void convert_kernel(const void* src, ElementType type, int64_t n, D* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    store(dst + i, load_f32(src, type, i));
}

// f32 -> bf16 by 16-byte loads (4 floats) and 8-byte stores: training converts the f32 residual
// gradient [T, hidden] twice per layer for the bf16 GEMMs; element loads reached ~1.7 TB/s.
__global__ void convert_f32_bf16_vec_kernel(const float4* src, int64_t vectors, uint2* dst) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < vectors;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float4 v = src[i];
    const auto bits = [](float x) {
      return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(x)));
    };
    dst[i] = make_uint2(bits(v.x) | (bits(v.y) << 16), bits(v.z) | (bits(v.w) << 16));
  }
}

}  // namespace

void CudaBackend::adamw_update(Tensor& master, const Tensor& grad, Tensor& exp_avg,
                               Tensor& exp_avg_sq, const AdamWScalars& s, Tensor& compute) {
  OpTimer timer(profiler_, stream_, "adamw_update");
  REFINERY_CHECK(master.ndim() == 1, "adamw_update: master must be f32 [n], found ",
                 master.describe());
  const int64_t n = master.numel();
  require_f32(master, {n}, "adamw_update master");
  require_f32(grad, {n}, "adamw_update grad");
  require_f32(exp_avg, {n}, "adamw_update exp_avg");
  require_f32(exp_avg_sq, {n}, "adamw_update exp_avg_sq");
  if (compute.defined())
    REFINERY_CHECK(compute.device() == Device::kCUDA && compute.numel() == n &&
                       (compute.dtype() == DType::kF32 || compute.dtype() == DType::kBF16),
                   "adamw_update compute: expected f32 or bf16 with ", n,
                   " elements (cuda), found ", compute.describe());
  if (n == 0) return;
  const DType compute_dtype = compute.defined() ? compute.dtype() : DType::kF32;
  dispatch_activation(compute_dtype, "adamw_update", [&](auto tag) {
    using C = decltype(tag);
    adamw_kernel<C><<<grid_for(n), kThreads, 0, stream_>>>(
        master.mutable_data<float>(), grad.data<float>(), exp_avg.mutable_data<float>(),
        exp_avg_sq.mutable_data<float>(), s, n,
        compute.defined() ? static_cast<C*>(compute.mutable_data()) : nullptr);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "adamw_update");
}

double CudaBackend::sum_squares(const Tensor& t) {
  OpTimer timer(profiler_, stream_, "sum_squares");
  return sum_squares_of(t, Tensor(), "sum_squares");
}

double CudaBackend::sum_squared_difference(const Tensor& a, const Tensor& b) {
  OpTimer timer(profiler_, stream_, "sum_squared_difference");
  REFINERY_CHECK(b.defined() && a.shape() == b.shape() && a.dtype() == b.dtype(),
                 "sum_squared_difference: expected two tensors of one shape and dtype, found ",
                 a.describe(), " and ", b.describe());
  return sum_squares_of(a, b, "sum_squared_difference");
}

// Σ a², or Σ (a − b)² when b is defined (same shape and dtype, checked by the caller).
double CudaBackend::sum_squares_of(const Tensor& a, const Tensor& b, const char* op) {
  for (const Tensor* t : {&a, &b})
    REFINERY_CHECK((t == &b && !t->defined()) ||
                       (t->defined() && t->device() == Device::kCUDA &&
                        (t->dtype() == DType::kF32 || t->dtype() == DType::kBF16)),
                   op, ": expected an f32 or bf16 cuda tensor, found ", t->describe());
  const int64_t n = a.numel();
  if (n == 0) return 0.0;
  Tensor partial = empty(DType::kF64, {int64_t{kSumBlocks}});
  Tensor result = empty(DType::kF64, {1});
  dispatch_activation(a.dtype(), op, [&](auto tag) {
    using T = decltype(tag);
    sum_squares_partial_kernel<T><<<kSumBlocks, kSumThreads, 0, stream_>>>(
        static_cast<const T*>(a.data()), b.defined() ? static_cast<const T*>(b.data()) : nullptr,
        n, static_cast<double*>(partial.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, op);
  sum_partials_kernel<<<1, 32, 0, stream_>>>(static_cast<const double*>(partial.data()),
                                             kSumBlocks,
                                             static_cast<double*>(result.mutable_data()));
  REFINERY_CUDA_AFTER_LAUNCH(*this, op);
  double value = 0.0;
  REFINERY_CUDA_CHECK(cudaMemcpyAsync(&value, result.data(), sizeof(double),
                                      cudaMemcpyDeviceToHost, stream_));
  REFINERY_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return value;
}

void CudaBackend::adamw_update_many(std::span<AdamWTensors> params, const AdamWScalars& s) {
  OpTimer timer(profiler_, stream_, "adamw_update_many");
  std::vector<AdamWEntry> entries;
  entries.reserve(params.size());
  int64_t chunks = 0;
  for (AdamWTensors& p : params) {
    // The checks of adamw_update, per tensor.
    REFINERY_CHECK(p.master.defined() && p.master.ndim() == 1,
                   "adamw_update_many: master must be f32 [n], found ", p.master.describe());
    const int64_t n = p.master.numel();
    require_f32(p.master, {n}, "adamw_update_many master");
    require_f32(p.grad, {n}, "adamw_update_many grad");
    require_f32(p.exp_avg, {n}, "adamw_update_many exp_avg");
    require_f32(p.exp_avg_sq, {n}, "adamw_update_many exp_avg_sq");
    if (p.compute.defined())
      REFINERY_CHECK(p.compute.device() == Device::kCUDA && p.compute.numel() == n &&
                         (p.compute.dtype() == DType::kF32 || p.compute.dtype() == DType::kBF16),
                     "adamw_update_many compute: expected f32 or bf16 with ", n,
                     " elements (cuda), found ", p.compute.describe());
    if (n == 0) continue;
    entries.push_back({p.master.mutable_data<float>(), p.grad.data<float>(),
                       p.exp_avg.mutable_data<float>(), p.exp_avg_sq.mutable_data<float>(),
                       p.compute.defined() ? p.compute.mutable_data() : nullptr, n, chunks,
                       p.compute.defined() && p.compute.dtype() == DType::kBF16 ? 1 : 0,
                       p.decay ? 1 : 0});
    chunks += (n + kAdamChunk - 1) / kAdamChunk;
  }
  if (entries.empty()) return;
  REFINERY_CHECK(entries.size() <= static_cast<std::size_t>(INT32_MAX),
                 "adamw_update_many: too many tensors (", entries.size(), ")");
  const Tensor table = device_table(*this, entries);
  adamw_many_kernel<<<many_grid(chunks), kThreads, 0, stream_>>>(
      static_cast<const AdamWEntry*>(table.data()), static_cast<int>(entries.size()), chunks, s);
  REFINERY_CUDA_AFTER_LAUNCH(*this, "adamw_update_many");
}

double CudaBackend::sum_squares_many(std::span<const Tensor> tensors) {
  OpTimer timer(profiler_, stream_, "sum_squares_many");
  std::vector<SumEntry> entries;
  entries.reserve(tensors.size());
  int64_t chunks = 0;
  for (const Tensor& t : tensors) {
    REFINERY_CHECK(t.defined() && t.device() == Device::kCUDA &&
                       (t.dtype() == DType::kF32 || t.dtype() == DType::kBF16),
                   "sum_squares_many: expected f32 or bf16 cuda tensors, found ", t.describe());
    const int64_t n = t.numel();
    if (n == 0) continue;
    entries.push_back({t.data(), n, chunks, t.dtype() == DType::kBF16 ? 1 : 0, 0});
    chunks += (n + kSumChunk - 1) / kSumChunk;
  }
  if (entries.empty()) return 0.0;
  REFINERY_CHECK(entries.size() <= static_cast<std::size_t>(INT32_MAX),
                 "sum_squares_many: too many tensors (", entries.size(), ")");
  const Tensor table = device_table(*this, entries);
  // partial[0, chunks): one per chunk; partial[chunks]: the total.
  Tensor partial = empty(DType::kF64, {chunks + 1});
  auto* partials = static_cast<double*>(partial.mutable_data());
  sum_squares_many_kernel<<<many_grid(chunks), kSumThreads, 0, stream_>>>(
      static_cast<const SumEntry*>(table.data()), static_cast<int>(entries.size()), chunks,
      partials);
  REFINERY_CUDA_AFTER_LAUNCH(*this, "sum_squares_many");
  sum_partials_many_kernel<<<1, kFinalThreads, 0, stream_>>>(partials, chunks, partials + chunks);
  REFINERY_CUDA_AFTER_LAUNCH(*this, "sum_squares_many (total)");
  double value = 0.0;
  REFINERY_CUDA_CHECK(cudaMemcpyAsync(&value, partials + chunks, sizeof(double),
                                      cudaMemcpyDeviceToHost, stream_));
  REFINERY_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return value;
}

void CudaBackend::convert(const Tensor& src, Tensor& dst) {
  OpTimer timer(profiler_, stream_, "convert");
  auto ok = [](const Tensor& t) {
    return t.defined() && t.device() == Device::kCUDA &&
           (t.dtype() == DType::kF32 || t.dtype() == DType::kBF16 || t.dtype() == DType::kF16);
  };
  REFINERY_CHECK(ok(src) && ok(dst) && src.shape() == dst.shape(),
                 "convert: f32/bf16/f16 cuda tensors of one shape expected, found ",
                 src.describe(), " and ", dst.describe());
  const int64_t n = src.numel();
  if (n == 0) return;
  const ElementType type = element_type(src.dtype(), "convert src");
  if (src.dtype() == DType::kF32 && dst.dtype() == DType::kBF16 && aligned16(src.data()) &&
      reinterpret_cast<uintptr_t>(dst.data()) % 8 == 0) {
    const int64_t vectors = n / 4, done = vectors * 4;
    if (vectors > 0)
      convert_f32_bf16_vec_kernel<<<grid_for(vectors), kThreads, 0, stream_>>>(
          static_cast<const float4*>(src.data()), vectors, static_cast<uint2*>(dst.mutable_data()));
    if (done < n)
      convert_kernel<__nv_bfloat16><<<grid_for(n - done), kThreads, 0, stream_>>>(
          src.data<float>() + done, type, n - done,
          static_cast<__nv_bfloat16*>(dst.mutable_data()) + done);
    REFINERY_CUDA_AFTER_LAUNCH(*this, "convert");
    return;
  }
  auto launch = [&](auto* out) {
    using D = std::remove_pointer_t<decltype(out)>;
    convert_kernel<D><<<grid_for(n), kThreads, 0, stream_>>>(src.data(), type, n, out);
  };
  if (dst.dtype() == DType::kF32)
    launch(dst.mutable_data<float>());
  else if (dst.dtype() == DType::kBF16)
    launch(static_cast<__nv_bfloat16*>(dst.mutable_data()));
  else
    launch(static_cast<__half*>(dst.mutable_data()));
  REFINERY_CUDA_AFTER_LAUNCH(*this, "convert");
}

}  // namespace refinery::backend::cuda
