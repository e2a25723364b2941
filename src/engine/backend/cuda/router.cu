// MoE routing on the GPU (same semantics as cpu/router.cpp, FAMILY_NOTES §5): one thread block
// per token, one thread per expert (E <= kMaxExperts). Scores (softmax / sigmoid) in f32, the
// correction bias added for selection only, the group limit (V2: max per group; V3: sum of the
// top-2 per group), then top-k by k rounds of a block arg-max. Ties go to the lower index, as on
// the CPU, so both backends choose the same experts for the same scores. The weights are summed
// and normalized by one thread in choice order, as on the CPU. Latency bound (tiny work).
#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

namespace {

constexpr int kMaxExperts = 256;
constexpr int kMaxTopK = 64;

struct RouteParams {
  int experts, top_k, n_group, topk_group, grouping;  // grouping: RouterGrouping as int
  bool softmax, norm_topk_prob, has_bias;
  double scaling;
};

// True when (va, ia) ranks before (vb, ib): larger value, then lower index; index -1 is "none".
__device__ inline bool ranks_before(float va, int ia, float vb, int ib) {
  if (ib < 0) return ia >= 0;
  if (ia < 0) return false;
  return va > vb || (va == vb && ia < ib);
}

// Block-wide arg-max of (value, index) held one per thread; every thread gets the winner index.
__device__ int block_argmax(float value, int index, float* s_value, int* s_index) {
  for (int o = 16; o > 0; o /= 2) {
    const float v2 = __shfl_down_sync(0xffffffffu, value, o);
    const int i2 = __shfl_down_sync(0xffffffffu, index, o);
    if (ranks_before(v2, i2, value, index)) {
      value = v2;
      index = i2;
    }
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    s_value[warp] = value;
    s_index[warp] = index;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w)
      if (ranks_before(s_value[w], s_index[w], s_value[0], s_index[0])) {
        s_value[0] = s_value[w];
        s_index[0] = s_index[w];
      }
  }
  __syncthreads();
  const int winner = s_index[0];
  __syncthreads();  // s_index is reused by the next call
  return winner;
}

__global__ void route_kernel(const float* logits, const void* bias, ElementType bias_type,
                             RouteParams p, int32_t* experts_out, float* weights_out) {
  __shared__ float score[kMaxExperts];
  __shared__ float choice[kMaxExperts];
  __shared__ float group_score[kMaxExperts];
  __shared__ float s_value[kMaxExperts / 32];
  __shared__ int s_index[kMaxExperts / 32];
  __shared__ int chosen[kMaxTopK];
  __shared__ float s_scalar;
  const int64_t t = blockIdx.x;
  const int e = threadIdx.x;
  const bool active = e < p.experts;
  const float l = active ? logits[t * p.experts + e] : -INFINITY;

  if (p.softmax) {
    // Max and sum by thread 0 in expert order (E <= 256: cheap, and the same order as the CPU).
    if (active) score[e] = l;
    __syncthreads();
    if (threadIdx.x == 0) {
      float mx = score[0];
      for (int i = 1; i < p.experts; ++i) mx = fmaxf(mx, score[i]);
      s_scalar = mx;
    }
    __syncthreads();
    const float ex = active ? expf(l - s_scalar) : 0.0f;
    __syncthreads();
    if (active) score[e] = ex;
    __syncthreads();
    if (threadIdx.x == 0) {
      float sum = 0.0f;
      for (int i = 0; i < p.experts; ++i) sum += score[i];
      s_scalar = sum;
    }
    __syncthreads();
    if (active) score[e] = ex / s_scalar;
  } else if (active) {
    score[e] = 1.0f / (1.0f + expf(-l));
  }
  __syncthreads();
  if (active) choice[e] = score[e] + (p.has_bias ? load_f32(bias, bias_type, e) : 0.0f);
  __syncthreads();

  if (p.grouping != static_cast<int>(RouterGrouping::kNone)) {
    const int per = p.experts / p.n_group;
    if (e < p.n_group) {  // thread g scores group g
      float first = -INFINITY, second = -INFINITY;
      for (int i = e * per; i < (e + 1) * per; ++i) {
        const float c = choice[i];
        if (c > first) {
          second = first;
          first = c;
        } else if (c > second) {
          second = c;
        }
      }
      group_score[e] = p.grouping == static_cast<int>(RouterGrouping::kGroupMax)
                           ? first
                           : first + (per > 1 ? second : 0.0f);
    }
    __syncthreads();
    // Keep the topk_group best groups; mask the experts of the others.
    __shared__ bool kept[kMaxExperts];
    if (e < p.n_group) kept[e] = false;
    __syncthreads();
    for (int round = 0; round < p.topk_group; ++round) {
      const bool candidate = e < p.n_group && !kept[e];
      const int g = block_argmax(candidate ? group_score[e] : -INFINITY, candidate ? e : -1,
                                 s_value, s_index);
      if (threadIdx.x == 0 && g >= 0) kept[g] = true;
      __syncthreads();
    }
    if (active && !kept[e / per]) choice[e] = -INFINITY;
    __syncthreads();
  }

  bool taken = false;
  for (int j = 0; j < p.top_k; ++j) {
    const bool candidate = active && !taken;
    const int winner =
        block_argmax(candidate ? choice[e] : -INFINITY, candidate ? e : -1, s_value, s_index);
    if (e == winner) taken = true;
    if (threadIdx.x == 0) chosen[j] = winner;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int j = 0; j < p.top_k; ++j) sum += score[chosen[j]];
    const float denominator = p.softmax ? sum : sum + 1e-20f;
    for (int j = 0; j < p.top_k; ++j) {
      float w = score[chosen[j]];
      if (p.norm_topk_prob) w /= denominator;
      experts_out[t * p.top_k + j] = chosen[j];
      weights_out[t * p.top_k + j] = static_cast<float>(w * p.scaling);
    }
  }
}

}  // namespace

void CudaBackend::route(const Tensor& logits, const Tensor& correction_bias, const RouterSpec& spec,
                        Tensor& experts, Tensor& weights) {
  OpTimer timer(profiler_, stream_, "route");
  const RouteSizes sizes = check_route(Device::kCUDA, logits, spec, experts, weights);
  const int64_t t_count = sizes.t_count;
  const int e_count = sizes.e_count, k = sizes.k;
  REFINERY_CHECK(e_count <= kMaxExperts && k <= kMaxTopK, "route: the CUDA router handles up to ",
                 kMaxExperts, " experts and top-", kMaxTopK, ", found ", e_count, " and top-", k);
  const bool grouped = spec.grouping != RouterGrouping::kNone;
  REFINERY_CHECK(!grouped || (spec.n_group > 0 && e_count % spec.n_group == 0 &&
                              spec.topk_group > 0 && spec.topk_group <= spec.n_group),
                 "route: ", e_count, " experts in ", spec.n_group, " groups, keeping ",
                 spec.topk_group);
  REFINERY_CHECK(t_count < (int64_t{1} << 31), "route: too many tokens");
  Tensor bias;
  if (correction_bias.defined()) {
    REFINERY_CHECK(correction_bias.numel() == e_count, "route: correction bias must have ", e_count,
                   " values");
    bias = on_device(correction_bias);
  }
  if (t_count == 0) return;
  RouteParams p{};
  p.experts = e_count;
  p.top_k = k;
  p.n_group = grouped ? spec.n_group : 1;
  p.topk_group = grouped ? spec.topk_group : 1;
  p.grouping = static_cast<int>(spec.grouping);
  p.softmax = spec.scoring == RouterScoring::kSoftmax;
  p.norm_topk_prob = spec.norm_topk_prob;
  p.has_bias = bias.defined();
  p.scaling = spec.routed_scaling_factor;
  // Whole warps, at least as many threads as experts (one per expert).
  const int threads = std::max(32, (e_count + 31) / 32 * 32);
  route_kernel<<<static_cast<unsigned>(t_count), threads, 0, stream_>>>(
      logits.data<float>(), bias.defined() ? bias.data() : nullptr,
      bias.defined() ? element_type(bias.dtype(), "route correction bias") : ElementType::kF32, p,
      experts.mutable_data<int32_t>(), weights.mutable_data<float>());
  REFINERY_CUDA_AFTER_LAUNCH(*this, "route");
}

}  // namespace refinery::backend::cuda
