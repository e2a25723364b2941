// MoE experts on the GPU: token permutation by expert, grouped GEMMs over all experts of the
// layer, weighted un-permutation. Two routes:
//   Device-routed (moe_experts_grouped_on_device; the default on compute 9.0 GPUs, see
//   use_device_grouped_gemm): the layer's experts stacked on the device once (gate_up [E, 2I, H],
//   down [E, H, I]); the routing sorted into expert-contiguous order by kernels (moe_routing.cu);
//   our grouped GEMM (grouped_gemm.cu: wgmma on Hopper, reading the per-expert row offsets from the
//   device, the routed rows of bf16 x through the permutation, SwiGLU in its epilogue) h [N, I];
//   grouped GEMM down [N, H]; un-permute. No host synchronization anywhere. (Without wgmma:
//   gathered xs, gate|up [N, 2I], a SwiGLU kernel.)
//   Host-routed (everything else):
//   0. The host reads the routing (T x k pairs, one small synchronous download: cuBLAS takes its
//      per-expert row counts on the host) and counting-sorts the pairs by expert (token order
//      inside an expert).
//   1. Permute: xs [N = T*k, hidden] = the routed rows in expert-contiguous order.
//   2. The expert GEMMs, bf16 inputs, f32 accumulation, outputs in the activation dtype:
//      a. padded: on the stack, each expert's rows are padded to the largest row count M, and two
//         strided batched GEMMs (cublasGemmStridedBatchedEx, E problems of one shape) compute
//         gate|up [E, M, 2I], SwiGLU, then down [E, M, H]. Used when padding wastes at most half
//         of the work (balanced routing);
//      b. grouped: one cublasGemmGroupedBatchedEx for the gate and up projections of every active
//         expert (2 x E problems of their exact sizes), SwiGLU, one for the down projections.
//   3. Un-permute: y[t] = Σ_j weight · outs[pos(t, j)], one thread per (token, column), the pairs
//      of a token summed in f32 in expert order (as the CPU does): deterministic, no atomics.
// Experts whose weights are not dense bf16 (FP8, f32 fixtures) run expert by expert through
// linear(), which dequantizes per call; so do all experts if cuBLAS rejects the grouped call.
// AWQ experts (all AWQ without bias, one shape): when some expert gets more than
// kAwqGemvMaxRows rows, the whole layer is dequantized per call into a bf16 stack of the layout
// above (not cached: it would cost the bf16 size the quantization saved) and runs the paths
// above; decode-sized calls (every expert <= kAwqGemvMaxRows rows) go expert by expert through
// linear(), i.e. the AWQ GEMV, reading only the routed experts' packed weights.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <variant>

#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/backend/cuda/cublas_check.hpp"
#include "engine/backend/cuda/grouped_gemm.hpp"
#include "engine/backend/cuda/kernel_util.cuh"
#include "engine/backend/cuda/moe_routing.cuh"
#include "engine/core/log.hpp"

namespace refinery::backend::cuda {

namespace {

// The host-built index arrays of one call, uploaded in a single copy (each synchronous copy drains
// the GPU): int32 sections, floats stored bit for bit.
class PackedIndices {
 public:
  int64_t add(const std::vector<int32_t>& v) {
    const int64_t at = static_cast<int64_t>(data_.size());
    data_.insert(data_.end(), v.begin(), v.end());
    return at;
  }
  int64_t add(const std::vector<float>& v) {
    const int64_t at = static_cast<int64_t>(data_.size());
    data_.resize(data_.size() + v.size());
    if (!v.empty()) std::memcpy(data_.data() + at, v.data(), v.size() * sizeof(float));
    return at;
  }
  Tensor upload() const {
    return Tensor::copy_of(DType::kI32, {static_cast<int64_t>(data_.size())}, data_.data())
        .to(Device::kCUDA);
  }

 private:
  std::vector<int32_t> data_;
};

bool dense_bf16(const LinearWeight& w) {
  const auto* dense = std::get_if<DenseWeight>(&w.storage);
  return dense != nullptr && dense->weight.dtype() == DType::kBF16 && !w.bias.defined();
}

// The layer's AWQ experts dequantized into a per-call stack (layout of StackedExperts: gate_up
// bf16 [E, 2I, H], down bf16 [E, H, I]); nullptr unless every expert's three projections are AWQ
// without bias with gate/up [I, H] and down [H, I].
std::shared_ptr<const CudaBackend::StackedExperts> awq_stacked_experts(
    CudaBackend& be, std::span<const ExpertWeights> experts) {
  if (experts.empty()) return nullptr;
  const int64_t inter = experts[0].gate.out_features(), hidden = experts[0].gate.in_features();
  for (const ExpertWeights& ew : experts) {
    for (const LinearWeight* w : {&ew.gate, &ew.up, &ew.down})
      if (!std::holds_alternative<AwqWeight>(w->storage) || w->bias.defined()) return nullptr;
    if (ew.gate.out_features() != inter || ew.up.out_features() != inter ||
        ew.gate.in_features() != hidden || ew.up.in_features() != hidden ||
        ew.down.out_features() != hidden || ew.down.in_features() != inter)
      return nullptr;
  }
  const int64_t e_count = static_cast<int64_t>(experts.size());
  auto stack = std::make_shared<CudaBackend::StackedExperts>();
  stack->inter = inter;
  stack->gate_up = be.empty(DType::kBF16, {e_count, 2 * inter, hidden});
  stack->down = be.empty(DType::kBF16, {e_count, hidden, inter});
  const std::size_t matrix_bytes = static_cast<std::size_t>(inter * hidden) * 2;
  auto* gate_up = static_cast<std::byte*>(stack->gate_up.mutable_data());
  auto* down = static_cast<std::byte*>(stack->down.mutable_data());
  for (int64_t e = 0; e < e_count; ++e) {
    const ExpertWeights& ew = experts[e];
    awq_dequantize_weight(be, std::get<AwqWeight>(ew.gate.storage), ew.gate.name,
                          gate_up + 2 * e * matrix_bytes);
    awq_dequantize_weight(be, std::get<AwqWeight>(ew.up.storage), ew.up.name,
                          gate_up + (2 * e + 1) * matrix_bytes);
    awq_dequantize_weight(be, std::get<AwqWeight>(ew.down.storage), ew.down.name,
                          down + e * matrix_bytes);
  }
  return stack;
}

// One GEMM problem of a grouped call: C[m, n] (column-major, ldc) = op_T(A) · B with A the
// row-major weight [m, k] and B the row-major activations [n, k].
struct GroupedProblem {
  const void* a;
  const void* b;
  void* c;
  int m, n, k;
};

// Runs all problems in one cublasGemmGroupedBatchedEx call (one group per problem). Returns
// false if cuBLAS does not support the call here (the caller falls back to one GEMM per problem).
// y[r] = x[source[r]] as bf16, or zeros where source[r] < 0 (padding rows).
template <typename T>
__global__ void gather_padded_kernel(const T* x, const int32_t* source, int64_t rows, int64_t d,
                                     __nv_bfloat16* y) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < rows * d;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t src = source[i / d];
    y[i] = src >= 0 ? __float2bfloat16_rn(to_f32(x[src * d + i % d])) : __float2bfloat16_rn(0.0f);
  }
}

// h[r, j] = silu(gu[r, j]) * gu[r, inter + j] as bf16: gu [rows, 2 * inter] holds gate | up.
// Grid: x over columns, y over rows (no 64-bit division per element).
template <typename T>
__global__ void swiglu_pairs_kernel(const T* gu, int64_t rows, int64_t inter, __nv_bfloat16* h) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* g_row = gu + r * 2 * inter;
    __nv_bfloat16* h_row = h + r * inter;
    for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < inter;
         j += int64_t{gridDim.x} * blockDim.x) {
      const float g = to_f32(g_row[j]), u = to_f32(g_row[inter + j]);
      h_row[j] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * u);
    }
  }
}

// The launch shape of swiglu_pairs_kernel.
dim3 swiglu_pairs_grid(int64_t rows, int64_t inter) {
  return dim3(static_cast<unsigned>((inter + kThreads - 1) / kThreads),
              static_cast<unsigned>(std::clamp<int64_t>(rows, 1, 65535)));
}

// For each of `batch` problems b: C_b[m, n] (column-major) = op_T(A_b) · B_b, i.e. row-major
// c_b [n, m] = b_b [n, k] · a_b [m, k]ᵀ; bf16 A and B, f32 accumulation.
void strided_batched_gemm(cublasHandle_t handle, const void* a, int64_t stride_a, const void* b,
                          int64_t stride_b, void* c, cudaDataType c_type, int64_t stride_c, int m,
                          int n, int k, int batch) {
  const float alpha = 1.0f, beta = 0.0f;
  REFINERY_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, a, CUDA_R_16BF, k, stride_a, b,
      CUDA_R_16BF, k, stride_b, &beta, c, c_type, m, stride_c, batch, CUBLAS_COMPUTE_32F,
      CUBLAS_GEMM_DEFAULT));
}

bool grouped_gemm(CudaBackend& be, const std::vector<GroupedProblem>& problems,
                  cudaDataType c_type) {
  const int count = static_cast<int>(problems.size());
  if (count == 0) return true;
  std::vector<cublasOperation_t> trans_a(count, CUBLAS_OP_T), trans_b(count, CUBLAS_OP_N);
  std::vector<int> m(count), n(count), k(count), group_size(count, 1);
  std::vector<float> alpha(count, 1.0f), beta(count, 0.0f);
  // Pointer arrays live on the device: [A..., B..., C...] in one upload.
  std::vector<const void*> pointers(3 * static_cast<std::size_t>(count));
  for (int i = 0; i < count; ++i) {
    m[i] = problems[i].m;
    n[i] = problems[i].n;
    k[i] = problems[i].k;
    pointers[i] = problems[i].a;
    pointers[count + i] = problems[i].b;
    pointers[2 * count + i] = problems[i].c;
  }
  const Tensor device_pointers =
      Tensor::copy_of(DType::kU8, {static_cast<int64_t>(pointers.size() * sizeof(void*))},
                      pointers.data())
          .to(Device::kCUDA);
  const auto* p = static_cast<const void* const*>(device_pointers.data());
  const cublasStatus_t status = cublasGemmGroupedBatchedEx(
      be.cublas(), trans_a.data(), trans_b.data(), m.data(), n.data(), k.data(), alpha.data(),
      p, CUDA_R_16BF, k.data(), p + count, CUDA_R_16BF, k.data(), beta.data(),
      const_cast<void* const*>(p + 2 * count), c_type, m.data(), count, group_size.data(),
      CUBLAS_COMPUTE_32F);
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) return false;
  REFINERY_CUBLAS_CHECK(status);
  return true;
}

// Whether stacked bf16 experts run through our grouped GEMM kernel (routed on the device) instead
// of cuBLAS (routed on the host): by default where the Hopper wgmma kernel runs (compute 9.0);
// REFINERY_MOE_GEMM=ggemm forces it (the mma.sync kernel elsewhere), =cublas forbids it.
bool use_device_grouped_gemm() {
  const char* v = std::getenv("REFINERY_MOE_GEMM");  // read per call (~100 ns): tests switch it
  if (v != nullptr && std::strcmp(v, "ggemm") == 0) return true;
  if (v != nullptr && std::strcmp(v, "cublas") == 0) return false;
  return grouped_gemm_wgmma_available();
}

}  // namespace

void CudaBackend::moe_experts_grouped_on_device(const Tensor& x, const Tensor& experts,
                                                const Tensor& weights, const StackedExperts& stack,
                                                Tensor& y) {
  const int64_t t_count = x.size(0), hidden = x.size(1), k = experts.size(1);
  const int64_t e_count = stack.gate_up.size(0), inter = stack.inter, n = t_count * k;
  const DType act = y.dtype();
  Tensor words = empty(DType::kI32, {device_routing_words(t_count, k, e_count)});
  const DeviceRouting r =
      route_pairs_on_device(experts.data<int32_t>(), weights.data<float>(), t_count, k, e_count,
                            words.mutable_data<int32_t>(), stream_);
  sync_if_debugging("moe_experts (routing)");
  // The permutation: bf16 activations are read in place by the GEMM through perm_token; f32 ones
  // are gathered into a bf16 copy xs [n, hidden] first.
  Tensor xs;
  if (act != DType::kBF16) {
    xs = empty(DType::kBF16, {n, hidden});
    dispatch_activation(act, "moe_experts (permute)", [&](auto tag) {
      using T = decltype(tag);
      gather_padded_kernel<T><<<grid_for(n * hidden), kThreads, 0, stream_>>>(
          static_cast<const T*>(x.data()), r.perm_token, n, hidden,
          static_cast<__nv_bfloat16*>(xs.mutable_data()));
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "moe_experts (permute)");
  }
  const bool fused = act == DType::kBF16;
  const void* x_operand = fused ? x.data() : xs.data();
  const int32_t* x_rows = fused ? r.perm_token : nullptr;
  Tensor h = empty(DType::kBF16, {n, inter});  // silu(gate) · up of every pair
  if (grouped_gemm_fused_swiglu_available()) {
    // SwiGLU in the GEMM's epilogue: gate|up never reaches memory.
    grouped_gemm_bf16({x_operand, stack.gate_up.data(), h.mutable_data(), r.group_offsets, e_count,
                       n, inter, hidden, false, x_rows, true},
                      stream_);
    sync_if_debugging("moe_experts (gate|up + swiglu)");
  } else {
    Tensor gu = empty(act, {n, 2 * inter});  // gate | up of every pair
    grouped_gemm_bf16({x_operand, stack.gate_up.data(), gu.mutable_data(), r.group_offsets,
                       e_count, n, 2 * inter, hidden, act == DType::kF32, x_rows},
                      stream_);
    sync_if_debugging("moe_experts (gate|up)");
    dispatch_activation(act, "moe_experts (swiglu)", [&](auto tag) {
      using T = decltype(tag);
      swiglu_pairs_kernel<T><<<swiglu_pairs_grid(n, inter), kThreads, 0, stream_>>>(
          static_cast<const T*>(gu.data()), n, inter,
          static_cast<__nv_bfloat16*>(h.mutable_data()));
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "moe_experts (swiglu)");
  }
  Tensor outs = empty(act, {n, hidden});
  grouped_gemm_bf16({h.data(), stack.down.data(), outs.mutable_data(), r.group_offsets, e_count, n,
                     hidden, inter, act == DType::kF32},
                    stream_);
  sync_if_debugging("moe_experts (down)");
  scatter_add_csr(outs, r.pos, r.perm_scale, r.token_offsets, r.targets, t_count, y,
                  "moe_experts (un-permute)");
}

std::shared_ptr<const CudaBackend::StackedExperts> CudaBackend::stacked_experts(
    std::span<const ExpertWeights> experts) {
  if (experts.empty()) return nullptr;
  const int64_t inter = experts[0].gate.out_features(), hidden = experts[0].gate.in_features();
  bool cacheable = true;
  for (const ExpertWeights& ew : experts) {
    if (!dense_bf16(ew.gate) || !dense_bf16(ew.up) || !dense_bf16(ew.down)) return nullptr;
    if (ew.gate.out_features() != inter || ew.up.out_features() != inter ||
        ew.gate.in_features() != hidden || ew.up.in_features() != hidden ||
        ew.down.out_features() != hidden || ew.down.in_features() != inter)
      return nullptr;
    for (const LinearWeight* w : {&ew.gate, &ew.up, &ew.down}) {
      const Tensor& t = std::get<DenseWeight>(w->storage).weight;
      cacheable = cacheable && (t.device() == Device::kCUDA || t.is_read_only());
    }
  }
  const int64_t e_count = static_cast<int64_t>(experts.size());
  const void* key = std::get<DenseWeight>(experts[0].gate.storage).weight.data();
  if (cacheable) {
    auto it = stacked_.find(key);
    if (it != stacked_.end() && it->second->inter == inter &&
        it->second->gate_up.size(0) == e_count)
      return it->second;
  }
  auto stack = std::make_shared<StackedExperts>();
  stack->inter = inter;
  stack->gate_up = empty(DType::kBF16, {e_count, 2 * inter, hidden});
  stack->down = empty(DType::kBF16, {e_count, hidden, inter});
  const std::size_t matrix_bytes = static_cast<std::size_t>(inter * hidden) * 2;
  for (int64_t e = 0; e < e_count; ++e) {
    const Tensor& gate = std::get<DenseWeight>(experts[e].gate.storage).weight;
    const Tensor& up = std::get<DenseWeight>(experts[e].up.storage).weight;
    const Tensor& down = std::get<DenseWeight>(experts[e].down.storage).weight;
    stack->gate_up.view_bytes(2 * e * matrix_bytes, DType::kBF16, {inter, hidden}).copy_from(gate);
    stack->gate_up.view_bytes((2 * e + 1) * matrix_bytes, DType::kBF16, {inter, hidden})
        .copy_from(up);
    stack->down.view_bytes(e * matrix_bytes, DType::kBF16, {hidden, inter}).copy_from(down);
    if (cacheable) stack->host.insert(stack->host.end(), {gate, up, down});
  }
  if (cacheable) stacked_[key] = stack;
  return stack;
}

void CudaBackend::moe_experts(const Tensor& x, const Tensor& experts, const Tensor& weights,
                              std::span<const ExpertWeights> expert_weights, Tensor& y,
                              bool accumulate) {
  OpTimer timer(profiler_, stream_, "moe_experts");
  const MoeSizes sizes = check_moe(Device::kCUDA, x, experts, weights, expert_weights, y);
  const int64_t t_count = sizes.t_count, hidden = sizes.hidden, k = sizes.k;
  const int64_t e_count = sizes.e_count;
  const int64_t n = t_count * k;
  REFINERY_CHECK(n < (int64_t{1} << 31), "moe: too many token-expert pairs: ", n);
  if (t_count == 0) return;
  // Every path below ends in scatter_add_csr, which adds onto y (per element y + Σ in f32, one
  // rounding): zeroed y gives the routed sum; accumulate keeps y's content (the shared experts'
  // output), which saves the separate add pass over [T, hidden] and the zero fill.
  if (!accumulate) fill_zero(y);
  if (k == 0 || hidden == 0) return;

  // Grouped GEMM path with routing on the device (no host synchronization): dense bf16 experts of
  // one shape (the stack), sizes the kernel supports, and the kernel chosen (see moe_gemm_choice).
  std::shared_ptr<const StackedExperts> stack = stacked_experts(expert_weights);
  if (stack != nullptr && use_device_grouped_gemm() &&
      grouped_gemm_supports(2 * stack->inter, hidden) &&
      grouped_gemm_supports(hidden, stack->inter)) {
    moe_experts_grouped_on_device(x, experts, weights, *stack, y);
    return;
  }

  const std::vector<int32_t> chosen = host_i32(experts);
  const Tensor host_weights = download(weights);
  const float* w = host_weights.data<float>();
  std::vector<int64_t> start(static_cast<std::size_t>(e_count + 1), 0);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t e = chosen[i];
    REFINERY_CHECK(e >= 0 && e < e_count, "moe: expert ", e, " of ", e_count);
    ++start[e + 1];
  }
  for (int64_t e = 0; e < e_count; ++e) start[e + 1] += start[e];
  // perm_token[p] / perm_scale[p]: the token and weight of the pair at sorted position p.
  // pos[t * k + j]: the sorted position of pair (t, j); per token ascending = expert order.
  std::vector<int32_t> perm_token(static_cast<std::size_t>(n)), pos(static_cast<std::size_t>(n));
  std::vector<float> perm_scale(static_cast<std::size_t>(n));
  std::vector<int64_t> cursor(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = cursor[chosen[i]]++;
    perm_token[p] = static_cast<int32_t>(i / k);
    perm_scale[p] = w[i];
    pos[i] = static_cast<int32_t>(p);
  }
  for (int64_t t = 0; t < t_count; ++t) std::sort(pos.begin() + t * k, pos.begin() + (t + 1) * k);
  std::vector<int32_t> offsets(static_cast<std::size_t>(t_count + 1)),
      targets(static_cast<std::size_t>(t_count));
  for (int64_t t = 0; t <= t_count; ++t) offsets[t] = static_cast<int32_t>(t * k);
  for (int64_t t = 0; t < t_count; ++t) targets[t] = static_cast<int32_t>(t);

  const DType act = y.dtype();
  const std::size_t act_bytes = dtype_bits(act) / 8;
  int64_t m_max = 0;
  for (int64_t e = 0; e < e_count; ++e) m_max = std::max(m_max, start[e + 1] - start[e]);
  if (stack == nullptr && m_max > kAwqGemvMaxRows)
    stack = awq_stacked_experts(*this, expert_weights);
  if (stack != nullptr && e_count * m_max <= n + n / 2) {
    // Padded path: row r = e * m_max + i holds expert e's i-th routed pair.
    const int64_t inter = stack->inter, rows = e_count * m_max;
    std::vector<int32_t> source(static_cast<std::size_t>(rows), -1), padded_of(n);
    std::vector<float> padded_scale(static_cast<std::size_t>(rows), 0.0f);
    for (int64_t e = 0; e < e_count; ++e)
      for (int64_t p = start[e]; p < start[e + 1]; ++p) {
        const int64_t r = e * m_max + (p - start[e]);
        source[r] = perm_token[p];
        padded_scale[r] = perm_scale[p];
        padded_of[p] = static_cast<int32_t>(r);
      }
    std::vector<int32_t> padded_pos(static_cast<std::size_t>(n));
    for (int64_t i = 0; i < n; ++i) padded_pos[i] = padded_of[pos[i]];
    PackedIndices packed;
    const int64_t at_source = packed.add(source), at_pos = packed.add(padded_pos),
                  at_scale = packed.add(padded_scale), at_offsets = packed.add(offsets),
                  at_targets = packed.add(targets);
    const Tensor indices = packed.upload();
    const int32_t* base = indices.data<int32_t>();
    Tensor xs = empty(DType::kBF16, {rows, hidden});
    dispatch_activation(act, "moe_experts (permute)", [&](auto tag) {
      using T = decltype(tag);
      gather_padded_kernel<T><<<grid_for(rows * hidden), kThreads, 0, stream_>>>(
          static_cast<const T*>(x.data()), base + at_source, rows, hidden,
          static_cast<__nv_bfloat16*>(xs.mutable_data()));
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "moe_experts (permute)");
    const cudaDataType c_type = act == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
    Tensor gu = empty(act, {rows, 2 * inter});
    strided_batched_gemm(cublas_, stack->gate_up.data(), 2 * inter * hidden, xs.data(),
                         m_max * hidden, gu.mutable_data(), c_type, m_max * 2 * inter,
                         static_cast<int>(2 * inter), static_cast<int>(m_max),
                         static_cast<int>(hidden), static_cast<int>(e_count));
    Tensor h = empty(DType::kBF16, {rows, inter});
    dispatch_activation(act, "moe_experts (swiglu)", [&](auto tag) {
      using T = decltype(tag);
      swiglu_pairs_kernel<T><<<swiglu_pairs_grid(rows, inter), kThreads, 0, stream_>>>(
          static_cast<const T*>(gu.data()), rows, inter,
          static_cast<__nv_bfloat16*>(h.mutable_data()));
    });
    REFINERY_CUDA_AFTER_LAUNCH(*this, "moe_experts (swiglu)");
    Tensor outs = empty(act, {rows, hidden});
    strided_batched_gemm(cublas_, stack->down.data(), hidden * inter, h.data(), m_max * inter,
                         outs.mutable_data(), c_type, m_max * hidden, static_cast<int>(hidden),
                         static_cast<int>(m_max), static_cast<int>(inter),
                         static_cast<int>(e_count));
    scatter_add_csr(outs, base + at_pos, reinterpret_cast<const float*>(base + at_scale),
                    base + at_offsets, base + at_targets, t_count, y, "moe_experts (un-permute)");
    return;
  }

  PackedIndices packed;
  const int64_t at_token = packed.add(perm_token), at_pos = packed.add(pos),
                at_scale = packed.add(perm_scale), at_offsets = packed.add(offsets),
                at_targets = packed.add(targets);
  const Tensor indices = packed.upload();
  const int32_t* base = indices.data<int32_t>();
  Tensor xs = empty(act, {n, hidden});
  gather_rows_device(x, base + at_token, n, xs, "moe_experts (permute)");
  const Tensor xs_bf16 = as_dtype(xs, DType::kBF16, "moe_experts (x to bf16)");

  // One buffer for every active expert's gate/up activations [n_e, inter_e] (widths may differ
  // between experts of a pruned model).
  int64_t scratch_elements = 0;
  for (int64_t e = 0; e < e_count; ++e)
    scratch_elements += (start[e + 1] - start[e]) * expert_weights[e].gate.out_features();
  Tensor gate_buffer = empty(act, {1, std::max<int64_t>(scratch_elements, 1)});
  Tensor up_buffer = empty(act, {1, std::max<int64_t>(scratch_elements, 1)});
  Tensor outs = empty(act, {n, hidden});

  // Grouped path: a stack (dense bf16 or dequantized AWQ), or every active expert has dense bf16
  // weights without bias.
  bool grouped = true;
  for (int64_t e = 0; e < e_count && grouped && stack == nullptr; ++e)
    if (start[e + 1] > start[e])
      grouped = dense_bf16(expert_weights[e].gate) && dense_bf16(expert_weights[e].up) &&
                dense_bf16(expert_weights[e].down);
  if (grouped) {
    const cudaDataType c_type = act == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
    std::vector<GroupedProblem> gate_up, down;
    int64_t offset = 0;
    // bf16_weight_rows may hand back a copy (a writable host weight): kept alive to the end.
    std::vector<Tensor> keep(3 * static_cast<std::size_t>(e_count));
    for (int64_t e = 0; e < e_count; ++e) {
      const int64_t rows = start[e + 1] - start[e];
      if (rows == 0) continue;
      const ExpertWeights& ew = expert_weights[e];
      const int inter = static_cast<int>(ew.gate.out_features());
      const void* xe = static_cast<const std::byte*>(xs_bf16.data()) + start[e] * hidden * 2;
      void* ge = static_cast<std::byte*>(gate_buffer.mutable_data()) + offset * act_bytes;
      void* ue = static_cast<std::byte*>(up_buffer.mutable_data()) + offset * act_bytes;
      // Weights from the stack when there is one (no second device copy of the experts).
      const std::size_t matrix = static_cast<std::size_t>(inter) * hidden * 2;
      const void* gate_w = stack ? static_cast<const std::byte*>(stack->gate_up.data()) + 2 * e * matrix
                                 : bf16_weight_rows(ew.gate, 0, inter, keep[3 * e]);
      const void* up_w = stack ? static_cast<const std::byte*>(stack->gate_up.data()) + (2 * e + 1) * matrix
                               : bf16_weight_rows(ew.up, 0, inter, keep[3 * e + 1]);
      gate_up.push_back({gate_w, xe, ge, inter, static_cast<int>(rows), static_cast<int>(hidden)});
      gate_up.push_back({up_w, xe, ue, inter, static_cast<int>(rows), static_cast<int>(hidden)});
      offset += rows * inter;
    }
    grouped = grouped_gemm(*this, gate_up, c_type);
    if (grouped) {
      swiglu(gate_buffer, up_buffer, gate_buffer);
      const Tensor h_bf16 = as_dtype(gate_buffer, DType::kBF16, "moe_experts (h to bf16)");
      offset = 0;
      for (int64_t e = 0; e < e_count; ++e) {
        const int64_t rows = start[e + 1] - start[e];
        if (rows == 0) continue;
        const ExpertWeights& ew = expert_weights[e];
        const int64_t inter = ew.gate.out_features();
        const void* h_e = static_cast<const std::byte*>(h_bf16.data()) + offset * 2;
        void* out_e = static_cast<std::byte*>(outs.mutable_data()) + start[e] * hidden * act_bytes;
        const void* down_w =
            stack ? static_cast<const std::byte*>(stack->down.data()) +
                        static_cast<std::size_t>(e) * hidden * inter * 2
                  : bf16_weight_rows(ew.down, 0, hidden, keep[3 * e + 2]);
        down.push_back({down_w, h_e, out_e,
                        static_cast<int>(hidden), static_cast<int>(rows), static_cast<int>(inter)});
        offset += rows * inter;
      }
      grouped = grouped_gemm(*this, down, c_type);
      REFINERY_CHECK(grouped, "moe: cuBLAS ran the grouped gate/up GEMM but not the down GEMM");
    } else {
      static bool warned = false;
      if (!warned) log::warn("cuBLAS does not support the grouped expert GEMM here; running the "
                             "experts one by one (slower)");
      warned = true;
    }
  }
  if (!grouped) {
    int64_t offset = 0;
    for (int64_t e = 0; e < e_count; ++e) {
      const int64_t rows = start[e + 1] - start[e];
      if (rows == 0) continue;
      const ExpertWeights& ew = expert_weights[e];
      const int64_t inter = ew.gate.out_features();
      const std::size_t byte_offset = static_cast<std::size_t>(offset) * act_bytes;
      Tensor g = gate_buffer.view_bytes(byte_offset, act, {rows, inter});
      Tensor u = up_buffer.view_bytes(byte_offset, act, {rows, inter});
      offset += rows * inter;
      const Tensor xe = xs.slice(start[e], start[e + 1]);
      Tensor oe = outs.slice(start[e], start[e + 1]);
      linear(xe, ew.gate, g);
      linear(xe, ew.up, u);
      swiglu(g, u, g);
      linear(g, ew.down, oe);
    }
  }
  scatter_add_csr(outs, base + at_pos, reinterpret_cast<const float*>(base + at_scale),
                  base + at_offsets, base + at_targets, t_count, y,
                  "moe_experts (un-permute)");
}

}  // namespace refinery::backend::cuda
