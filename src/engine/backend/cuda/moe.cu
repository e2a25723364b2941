// MoE experts on the GPU, the simple correct form (the grouped GEMM comes with the performance
// work): the host reads the routing (T x k pairs, one small synchronous download), counting-sorts
// the pairs by expert (token order inside an expert), and the device then
//   1. gathers the routed rows into expert-contiguous order, xs [N = T*k, hidden];
//   2. per active expert, runs gate/up GEMMs, SwiGLU and the down GEMM on its row block through
//      linear() (cuBLAS), into outs [N, hidden];
//   3. combines: y[t] = Σ_j weight · outs[pos(t, j)], one thread per (token, column), the pairs of
//      a token summed in expert order (as the CPU does), deterministic and without atomics.
#include <algorithm>

#include "engine/backend/cuda/kernel_util.cuh"

namespace refinery::backend::cuda {

void CudaBackend::moe_experts(const Tensor& x, const Tensor& experts, const Tensor& weights,
                              std::span<const ExpertWeights> expert_weights, Tensor& y) {
  const MoeSizes sizes = check_moe(Device::kCUDA, x, experts, weights, expert_weights, y);
  const int64_t t_count = sizes.t_count, hidden = sizes.hidden, k = sizes.k;
  const int64_t e_count = sizes.e_count;
  const int64_t n = t_count * k;
  REFINERY_CHECK(n < (int64_t{1} << 31), "moe: too many token-expert pairs: ", n);
  if (t_count == 0) return;
  fill_zero(y);
  if (k == 0 || hidden == 0) return;

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

  const Tensor perm_token_d = device_i32(perm_token), pos_d = device_i32(pos),
               perm_scale_d = device_f32(perm_scale), offsets_d = device_i32(offsets),
               targets_d = device_i32(targets);
  Tensor xs = empty(DType::kF32, {n, hidden});
  gather_rows_device(x.data<float>(), perm_token_d.data<int32_t>(), n, hidden,
                     xs.mutable_data<float>(), "moe_experts (gather)");

  // One buffer for every active expert's gate/up activations [n_e, inter_e] (widths may differ
  // between experts of a pruned model).
  int64_t scratch_floats = 0;
  for (int64_t e = 0; e < e_count; ++e)
    scratch_floats += (start[e + 1] - start[e]) * expert_weights[e].gate.out_features();
  Tensor gate_buffer = empty(DType::kF32, {std::max<int64_t>(scratch_floats, 1)});
  Tensor up_buffer = empty(DType::kF32, {std::max<int64_t>(scratch_floats, 1)});
  Tensor outs = empty(DType::kF32, {n, hidden});
  int64_t scratch_offset = 0;
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t rows = start[e + 1] - start[e];
    if (rows == 0) continue;
    const ExpertWeights& ew = expert_weights[e];
    const int64_t inter = ew.gate.out_features();
    const std::size_t byte_offset = static_cast<std::size_t>(scratch_offset) * sizeof(float);
    Tensor g = gate_buffer.view_bytes(byte_offset, DType::kF32, {rows, inter});
    Tensor u = up_buffer.view_bytes(byte_offset, DType::kF32, {rows, inter});
    scratch_offset += rows * inter;
    const Tensor xe = xs.slice(start[e], start[e + 1]);
    Tensor oe = outs.slice(start[e], start[e + 1]);
    linear(xe, ew.gate, g);
    linear(xe, ew.up, u);
    swiglu(g, u, g);
    linear(g, ew.down, oe);
  }
  scatter_add_csr(outs.data<float>(), hidden, pos_d.data<int32_t>(), perm_scale_d.data<float>(),
                  offsets_d.data<int32_t>(), targets_d.data<int32_t>(), t_count,
                  y.mutable_data<float>(), "moe_experts (combine)");
}

}  // namespace refinery::backend::cuda
