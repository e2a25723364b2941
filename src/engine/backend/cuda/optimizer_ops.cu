// The optimizer's ops on the GPU: adamw_update, sum_squares (the global gradient norm), convert.
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
#include <cuda_fp16.h>

#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr unsigned kSumBlocks = 1024;
constexpr int kSumThreads = 256;

template <typename C>
__global__ void adamw_kernel(float* master, const float* grad, float* exp_avg, float* exp_avg_sq,
                             AdamWScalars s, int64_t n, C* compute) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float g = __fmul_rn(grad[i], s.grad_scale);
    float w = master[i];
    if (s.decay) w = __fmul_rn(w, s.decay_factor);
    const float m0 = exp_avg[i];
    const float m = __fmaf_rn(s.lerp_weight, __fsub_rn(g, m0), m0);
    float v = __fmul_rn(exp_avg_sq[i], s.beta2);
    v = __fmaf_rn(__fmul_rn(s.one_minus_beta2, g), g, v);  // as the CPU: std::fma
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bc2_sqrt), s.eps);
    w = __fadd_rn(w, __fdiv_rn(__fmul_rn(s.neg_step_size, m), denom));
    master[i] = w;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (compute != nullptr) compute[i] = from_f32<C>(w);
  }
}

template <typename T>
__global__ void sum_squares_partial_kernel(const T* x, int64_t n, double* partial) {
  __shared__ double scratch[kSumThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const double v = to_f32(x[i]);
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
  REFINERY_CHECK(t.defined() && t.device() == Device::kCUDA &&
                     (t.dtype() == DType::kF32 || t.dtype() == DType::kBF16),
                 "sum_squares: expected an f32 or bf16 cuda tensor, found ", t.describe());
  const int64_t n = t.numel();
  if (n == 0) return 0.0;
  Tensor partial = empty(DType::kF64, {int64_t{kSumBlocks}});
  Tensor result = empty(DType::kF64, {1});
  dispatch_activation(t.dtype(), "sum_squares", [&](auto tag) {
    using T = decltype(tag);
    sum_squares_partial_kernel<T><<<kSumBlocks, kSumThreads, 0, stream_>>>(
        static_cast<const T*>(t.data()), n, static_cast<double*>(partial.mutable_data()));
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "sum_squares");
  sum_partials_kernel<<<1, 32, 0, stream_>>>(static_cast<const double*>(partial.data()),
                                             kSumBlocks,
                                             static_cast<double*>(result.mutable_data()));
  REFINERY_CUDA_AFTER_LAUNCH(*this, "sum_squares (total)");
  double value = 0.0;
  REFINERY_CUDA_CHECK(cudaMemcpyAsync(&value, result.data(), sizeof(double),
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
