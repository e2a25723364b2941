// route_backward: the gradient of the routing weights with respect to the router logits, the
// selection held fixed. Per token (router.cpp's forward):
//   s = softmax(l) or sigmoid(l)                       scores [E]
//   w_j = s[c_j] / Z · ρ   with Z = Σ_j s[c_j] (+ 1e-20 for sigmoid) under norm_topk_prob, else
//   w_j = s[c_j] · ρ       (ρ = routed_scaling_factor, c = the chosen experts [k])
// Backward, g_j = dweights[j] · ρ:
//   normalized:  ds[c_j] += g_j / Z − (Σ_i g_i s[c_i]) / Z²;  otherwise ds[c_j] += g_j
//   softmax:     dl_e = s_e (ds_e − Σ_f s_f ds_f);  sigmoid: dl_e = ds_e · s_e (1 − s_e)
// Grouping and the correction bias only select, so they have no gradient. Scores are recomputed in
// double (the gradient of the exact function the f32 forward rounds; a saturated f32 sigmoid would
// otherwise give exactly 0). One token per task.
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

void CpuBackend::route_backward(const Tensor& logits, const RouterSpec& spec,
                                const Tensor& experts, const Tensor& dweights, Tensor& dlogits) {
  // dweights in the place of the forward's weights: f32 [T, k].
  const RouteSizes sizes = check_route(Device::kCPU, logits, spec, experts, dweights);
  const int64_t t_count = sizes.t_count;
  const int e_count = sizes.e_count, k = sizes.k;
  if (!dlogits.defined()) return;
  require_f32(dlogits, {t_count, e_count}, "route_backward dlogits");
  const int32_t* pe = experts.data<int32_t>();
  for (int64_t i = 0; i < t_count * k; ++i)
    REFINERY_CHECK(pe[i] >= 0 && pe[i] < e_count, "route_backward: expert ", pe[i], " of ",
                   e_count);
  const float* pl = logits.data<float>();
  const float* pdw = dweights.data<float>();
  float* pdl = dlogits.mutable_data<float>();
  const bool sigmoid = spec.scoring == RouterScoring::kSigmoid;
  const double rho = spec.routed_scaling_factor;

#pragma omp parallel for if (t_count > 64)
  for (int64_t t = 0; t < t_count; ++t) {
    const float* l = pl + t * e_count;
    std::vector<double> score(static_cast<std::size_t>(e_count));
    if (!sigmoid) {
      const double mx = *std::max_element(l, l + e_count);
      double sum = 0.0;
      for (int e = 0; e < e_count; ++e) sum += score[e] = std::exp(l[e] - mx);
      for (double& s : score) s /= sum;
    } else {
      for (int e = 0; e < e_count; ++e) score[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(l[e])));
    }
    const int32_t* c = pe + t * k;
    // ds: gradient with respect to the scores [E].
    std::vector<double> ds(static_cast<std::size_t>(e_count), 0.0);
    if (spec.norm_topk_prob) {
      double sum = 0.0;
      for (int j = 0; j < k; ++j) sum += score[c[j]];
      const double z = sigmoid ? sum + 1e-20 : sum;
      double gs = 0.0;  // Σ_i g_i s[c_i]
      for (int j = 0; j < k; ++j) gs += static_cast<double>(pdw[t * k + j]) * rho * score[c[j]];
      for (int j = 0; j < k; ++j)
        ds[c[j]] += static_cast<double>(pdw[t * k + j]) * rho / z - gs / (z * z);
    } else {
      for (int j = 0; j < k; ++j) ds[c[j]] += static_cast<double>(pdw[t * k + j]) * rho;
    }
    float* dl = pdl + t * e_count;
    if (!sigmoid) {
      double dot = 0.0;
      for (int e = 0; e < e_count; ++e) dot += score[e] * ds[e];
      for (int e = 0; e < e_count; ++e)
        dl[e] += static_cast<float>(score[e] * (ds[e] - dot));
    } else {
      for (int e = 0; e < e_count; ++e) {
        const double s = score[e];
        dl[e] += static_cast<float>(ds[e] * s * (1.0 - s));
      }
    }
  }
}

}  // namespace refinery::backend::cpu
