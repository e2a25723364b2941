// attention_backward: gradients of causal attention over whole sequences (S == T).
//
// Per query head h (kv head h / (H / KV)) and block of 64 queries [t0, t0 + n), which see keys
// [0, t0 + n):
//   P  = softmax(q·kᵀ·scale) with the causal mask, recomputed in f32 exactly as attention.cpp;
//   dP = dout·vᵀ,  δ_i = Σ_c dout[i, c]·out[i, c] (= Σ_j P_ij dP_ij),  dS = P∘(dP − δ);
//   dq += scale·dS·k,  dk += scale·dSᵀ·q,  dv += Pᵀ·dout.
// Eigen GEMMs on strided maps of the [T, H, d] / [T, KV, d] layouts. One task per kv head: it owns
// dk/dv of that head and dq of its H / KV query heads, and adds the (head, block) contributions in
// a fixed order, so the result does not depend on the thread count. Memory per task: a few
// [64, T] f32 blocks. Compute bound (four GEMMs per block, like the forward's two).
#include <omp.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Strided = Eigen::OuterStride<>;
using ConstStridedMap = Eigen::Map<const RowMatrix, 0, Strided>;
using StridedMap = Eigen::Map<RowMatrix, 0, Strided>;
constexpr int64_t kQueryBlock = 64;
}  // namespace

void CpuBackend::attention_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& dout, float scale, Tensor& dq,
                                    Tensor& dk, Tensor& dv, GradWrite write, const Tensor& lse) {
  const AttentionSizes sizes = check_attention(Device::kCPU, q, k, v, out);
  const int64_t t_count = sizes.t_count, heads = sizes.heads, d_qk = sizes.dk;
  const int64_t kv_heads = sizes.kv_heads, d_v = sizes.dv;
  REFINERY_CHECK(sizes.s_count == t_count, "attention_backward: whole sequences only (S == T), "
                 "found ", sizes.s_count, " keys for ", t_count, " queries");
  require_f32(dout, {t_count, heads, d_v}, "attention_backward dout");
  if (dq.defined()) require_f32(dq, {t_count, heads, d_qk}, "attention_backward dq");
  if (dk.defined()) require_f32(dk, {t_count, kv_heads, d_qk}, "attention_backward dk");
  if (dv.defined()) require_f32(dv, {t_count, kv_heads, d_v}, "attention_backward dv");
  check_attention_lse(Device::kCPU, lse, heads, t_count, "attention_backward");
  if (t_count == 0 || (!dq.defined() && !dk.defined() && !dv.defined())) return;
  // The row log-sum-exp is recomputed below (lse is not needed here). Overwriting = adding into
  // zeros.
  if (write == GradWrite::kOverwrite)
    for (Tensor* g : {&dq, &dk, &dv})
      if (g->defined()) fill_zero(*g);

  const int64_t group = heads / kv_heads;
  const int64_t blocks = (t_count + kQueryBlock - 1) / kQueryBlock;
  const float* pq = q.data<float>();
  const float* pk = k.data<float>();
  const float* pv = v.data<float>();
  const float* po = out.data<float>();
  const float* pdo = dout.data<float>();
  float* pdq = dq.defined() ? dq.mutable_data<float>() : nullptr;
  float* pdk = dk.defined() ? dk.mutable_data<float>() : nullptr;
  float* pdv = dv.defined() ? dv.mutable_data<float>() : nullptr;

  const bool parallel = kv_heads > 1 &&
                        t_count * t_count * heads * (d_qk + d_v) >= (int64_t{1} << 18) &&
                        !omp_in_parallel();
#pragma omp parallel if (parallel)
  {
    RowMatrix p, dp;
#pragma omp for schedule(dynamic)
    for (int64_t kvh = 0; kvh < kv_heads; ++kvh) {
      ConstStridedMap k_all(pk + kvh * d_qk, t_count, d_qk, Strided(kv_heads * d_qk));
      ConstStridedMap v_all(pv + kvh * d_v, t_count, d_v, Strided(kv_heads * d_v));
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        for (int64_t b = 0; b < blocks; ++b) {
          const int64_t t0 = b * kQueryBlock, n = std::min(kQueryBlock, t_count - t0);
          const int64_t keys = t0 + n;  // the last query of the block sees this many keys
          ConstStridedMap qm(pq + (t0 * heads + h) * d_qk, n, d_qk, Strided(heads * d_qk));
          ConstStridedMap om(po + (t0 * heads + h) * d_v, n, d_v, Strided(heads * d_v));
          ConstStridedMap dom(pdo + (t0 * heads + h) * d_v, n, d_v, Strided(heads * d_v));
          const auto km = k_all.topRows(keys);
          const auto vm = v_all.topRows(keys);
          // P [n, keys], as the forward computes it.
          p.resize(n, keys);
          p.noalias() = qm * km.transpose();
          causal_softmax_rows(p.data(), n, keys, t0 + 1, scale);
          if (pdv != nullptr) {
            StridedMap dvm(pdv + kvh * d_v, keys, d_v, Strided(kv_heads * d_v));
            dvm.noalias() += p.transpose() * dom;
          }
          if (pdq == nullptr && pdk == nullptr) continue;
          // dS = P∘(dP − δ), in place in dp; masked entries have P = 0.
          dp.resize(n, keys);
          dp.noalias() = dom * vm.transpose();
          for (int64_t i = 0; i < n; ++i) {
            double delta = 0.0;
            for (int64_t c = 0; c < d_v; ++c)
              delta += static_cast<double>(dom(i, c)) * static_cast<double>(om(i, c));
            const float delta_f = static_cast<float>(delta);
            float* dprow = dp.data() + i * keys;
            const float* prow = p.data() + i * keys;
            for (int64_t j = 0; j < keys; ++j) dprow[j] = prow[j] * (dprow[j] - delta_f);
          }
          if (pdq != nullptr) {
            StridedMap dqm(pdq + (t0 * heads + h) * d_qk, n, d_qk, Strided(heads * d_qk));
            dqm.noalias() += scale * (dp * km);
          }
          if (pdk != nullptr) {
            StridedMap dkm(pdk + kvh * d_qk, keys, d_qk, Strided(kv_heads * d_qk));
            dkm.noalias() += scale * (dp.transpose() * qm);
          }
        }
      }
    }
  }
}

}  // namespace refinery::backend::cpu
