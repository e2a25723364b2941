// Backward of the MoE routing ops on the GPU: route (the gate's scoring and weighting) and
// scatter_add_rows (the weighted un-permute).
//
// route_backward, the selection held fixed: with scores s (softmax over all E, or sigmoid),
// chosen experts c_j, D = Σ_j s_{c_j} (+1e-20 for sigmoid, as the forward) and a = routed
// scaling factor, the forward weights are w_j = a · s_{c_j} / D (norm_topk_prob) or a · s_{c_j}.
//   ds_{c_i} = a · dw_i                                  (no renormalization)
//   ds_{c_i} = (a / D) · (dw_i − Σ_j dw_j · s_{c_j} / D)   (renormalized)
//   dlogits_e += s_e · (ds_e − Σ_f s_f · ds_f)   (softmax)   or   ds_e · s_e · (1 − s_e) (sigmoid).
// One block per token, scores recomputed in double in shared memory (as the CPU: a saturated f32
// sigmoid would give exactly 0), the small sums by thread 0 in expert order (deterministic). Expert ids are checked on the host first (one small synchronous download).
//
// scatter_add_rows_backward: dx[i, :] += scale[i] · dy[rows[i], :], dscale[i] += x[i, :]·dy[rows[i], :];
// one block per entry i (the row reduction in a fixed tree order). Rows checked on the host.
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kRouteThreads = 256;

struct RouteBackwardParams {
  int experts, top_k;
  bool softmax, norm_topk_prob;
  double scaling;
};

// Dynamic shared memory: s [E], ds [E] (double).
__global__ void route_backward_kernel(const float* logits, const int32_t* chosen,
                                      const float* dweights, RouteBackwardParams p,
                                      float* dlogits) {
  extern __shared__ double shared[];
  double* score = shared;
  double* ds = shared + p.experts;
  __shared__ double s_scalar;
  const int64_t t = blockIdx.x;
  const float* l = logits + t * p.experts;
  if (p.softmax) {
    if (threadIdx.x == 0) {
      float mx = l[0];
      for (int e = 1; e < p.experts; ++e) mx = fmaxf(mx, l[e]);
      s_scalar = mx;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x)
      score[e] = exp(static_cast<double>(l[e]) - s_scalar);
    __syncthreads();
    if (threadIdx.x == 0) {
      double sum = 0.0;
      for (int e = 0; e < p.experts; ++e) sum += score[e];
      s_scalar = sum;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x) score[e] /= s_scalar;
  } else {
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x)
      score[e] = 1.0 / (1.0 + exp(-static_cast<double>(l[e])));
  }
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) ds[e] = 0.0;
  __syncthreads();
  if (threadIdx.x == 0) {
    const int32_t* c = chosen + t * p.top_k;
    const float* dw = dweights + t * p.top_k;
    if (p.norm_topk_prob) {
      double sum = 0.0;
      for (int j = 0; j < p.top_k; ++j) sum += score[c[j]];
      const double denominator = p.softmax ? sum : sum + 1e-20;
      double weighted = 0.0;
      for (int j = 0; j < p.top_k; ++j) weighted += static_cast<double>(dw[j]) * score[c[j]];
      const double mean = weighted / denominator;
      for (int j = 0; j < p.top_k; ++j)
        ds[c[j]] += p.scaling / denominator * (static_cast<double>(dw[j]) - mean);
    } else {
      for (int j = 0; j < p.top_k; ++j) ds[c[j]] += p.scaling * static_cast<double>(dw[j]);
    }
    if (p.softmax) {
      double dot = 0.0;
      for (int j = 0; j < p.top_k; ++j) dot += score[c[j]] * ds[c[j]];  // ds is 0 elsewhere
      s_scalar = dot;
    }
  }
  __syncthreads();
  float* out = dlogits + t * p.experts;
  for (int e = threadIdx.x; e < p.experts; e += blockDim.x) {
    const double se = score[e];
    out[e] += static_cast<float>(p.softmax ? se * (ds[e] - s_scalar) : ds[e] * se * (1.0 - se));
  }
}

template <typename T>
__global__ void scatter_add_rows_backward_kernel(const T* x, const int32_t* rows,
                                                 const float* scale, const T* dy, int64_t d,
                                                 T* dx, float* dscale) {
  __shared__ float partial[kThreads / 32];
  const int64_t i = blockIdx.x;
  const T* dyr = dy + static_cast<int64_t>(rows[i]) * d;
  const float sc = scale[i];
  float dot = 0.0f;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    const float g = to_f32(dyr[c]);
    if (dscale != nullptr) dot += to_f32(x[i * d + c]) * g;
    if (dx != nullptr) dx[i * d + c] = from_f32<T>(to_f32(dx[i * d + c]) + sc * g);
  }
  if (dscale == nullptr) return;
  for (int o = 16; o > 0; o /= 2) dot += __shfl_down_sync(0xffffffffu, dot, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = dot;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w];
    dscale[i] += total;
  }
}

}  // namespace

void CudaBackend::route_backward(const Tensor& logits, const RouterSpec& spec,
                                 const Tensor& experts, const Tensor& dweights, Tensor& dlogits) {
  OpTimer timer(profiler_, stream_, "route_backward");
  if (!dlogits.defined()) return;
  const RouteSizes sizes = check_route(Device::kCUDA, logits, spec, experts, dweights);
  const int64_t t_count = sizes.t_count;
  const int e_count = sizes.e_count, k = sizes.k;
  require_f32(dlogits, {t_count, e_count}, "route_backward dlogits");
  REFINERY_CHECK(t_count < (int64_t{1} << 31), "route_backward: too many tokens");
  REFINERY_CHECK(e_count <= 3072, "route_backward: ", e_count,
                 " experts exceed the kernel's shared memory");
  const std::vector<int32_t> chosen = host_i32(experts);
  for (std::size_t i = 0; i < chosen.size(); ++i)
    REFINERY_CHECK(chosen[i] >= 0 && chosen[i] < e_count, "route_backward: expert id ", chosen[i],
                   " of token ", i / k, " outside [0, ", e_count, ")");
  if (t_count == 0) return;
  RouteBackwardParams p{};
  p.experts = e_count;
  p.top_k = k;
  p.softmax = spec.scoring == RouterScoring::kSoftmax;
  p.norm_topk_prob = spec.norm_topk_prob;
  p.scaling = spec.routed_scaling_factor;
  const std::size_t shared = 2 * sizeof(double) * static_cast<std::size_t>(e_count);
  route_backward_kernel<<<static_cast<unsigned>(t_count), kRouteThreads, shared, stream_>>>(
      logits.data<float>(), experts.data<int32_t>(), dweights.data<float>(), p,
      dlogits.mutable_data<float>());
  REFINERY_CUDA_AFTER_LAUNCH(*this, "route_backward");
}

void CudaBackend::scatter_add_rows_backward(const Tensor& x, const Tensor& rows,
                                            const Tensor& scale, const Tensor& dy, Tensor& dx,
                                            Tensor& dscale) {
  OpTimer timer(profiler_, stream_, "scatter_add_rows_backward");
  const RowsSizes sizes = check_scatter_add_rows(Device::kCUDA, x, rows, scale, dy);
  const int64_t n = sizes.n, d = sizes.d, t_count = sizes.t_count;
  require_same_dtype(x, dy, "scatter_add_rows_backward x and dy");
  if (dx.defined()) {
    backend::require_float(Device::kCUDA, dx, {n, d}, "scatter_add_rows_backward dx");
    require_same_dtype(x, dx, "scatter_add_rows_backward x and dx");
  }
  if (dscale.defined()) require_f32(dscale, {n}, "scatter_add_rows_backward dscale");
  REFINERY_CHECK(n < (int64_t{1} << 31), "scatter_add_rows_backward: too many rows: ", n);
  const std::vector<int32_t> r = host_i32(rows);
  for (int64_t i = 0; i < n; ++i)
    REFINERY_CHECK(r[i] >= 0 && r[i] < t_count, "scatter_add_rows_backward: row ", r[i], " of ",
                   t_count);
  if (n == 0 || (!dx.defined() && !dscale.defined())) return;
  dispatch_activation(x.dtype(), "scatter_add_rows_backward", [&](auto tag) {
    using T = decltype(tag);
    scatter_add_rows_backward_kernel<T><<<static_cast<unsigned>(n), kThreads, 0, stream_>>>(
        static_cast<const T*>(x.data()), rows.data<int32_t>(), scale.data<float>(),
        static_cast<const T*>(dy.data()), d,
        dx.defined() ? static_cast<T*>(dx.mutable_data()) : nullptr,
        dscale.defined() ? dscale.mutable_data<float>() : nullptr);
  });
  REFINERY_CUDA_AFTER_LAUNCH(*this, "scatter_add_rows_backward");
}

}  // namespace refinery::backend::cuda
