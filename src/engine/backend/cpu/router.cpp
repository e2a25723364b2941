// MoE routing (FAMILY_NOTES §5): scoring (softmax / sigmoid), selection with an optional
// score-correction bias and group limit (DeepSeek-V2 max per group, V3 sum of top-2 per group),
// weights from the unbiased scores, optional renormalization, routed scaling. One token per task.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {

// Indices of the k largest values, by value descending, ties to the lower index.
std::vector<int> top_k_indices(const std::vector<float>& v, int k) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

}  // namespace

void CpuBackend::route(const Tensor& logits, const Tensor& correction_bias, const RouterSpec& spec,
                       Tensor& experts, Tensor& weights) {
  const RouteSizes sizes = check_route(Device::kCPU, logits, spec, experts, weights);
  const int64_t t_count = sizes.t_count;
  const int e_count = sizes.e_count, k = sizes.k;
  const bool grouped = spec.grouping != RouterGrouping::kNone;
  REFINERY_CHECK(
      !grouped ||
          (spec.n_group > 0 && e_count % spec.n_group == 0 && spec.topk_group <= spec.n_group),
      "route: ", e_count, " experts in ", spec.n_group, " groups, keeping ", spec.topk_group);
  std::vector<float> bias;
  if (correction_bias.defined()) {
    REFINERY_CHECK(correction_bias.numel() == e_count, "route: correction bias must have ", e_count,
                   " values");
    bias = to_f32_vector(correction_bias);
  }
  const float* pl = logits.data<float>();
  int32_t* pe = experts.mutable_data<int32_t>();
  float* pw = weights.mutable_data<float>();

#pragma omp parallel for if (t_count > 64)
  for (int64_t t = 0; t < t_count; ++t) {
    const float* l = pl + t * e_count;
    std::vector<float> score(static_cast<std::size_t>(e_count));
    if (spec.scoring == RouterScoring::kSoftmax) {
      const float mx = *std::max_element(l, l + e_count);
      float sum = 0.0f;
      for (int e = 0; e < e_count; ++e) sum += score[e] = std::exp(l[e] - mx);
      for (float& s : score) s /= sum;
    } else {
      for (int e = 0; e < e_count; ++e) score[e] = 1.0f / (1.0f + std::exp(-l[e]));
    }
    std::vector<float> choice = score;  // what selection ranks; the weights come from `score`
    if (!bias.empty())
      for (int e = 0; e < e_count; ++e) choice[e] += bias[e];
    if (grouped) {
      const int per = e_count / spec.n_group;
      std::vector<float> group_score(static_cast<std::size_t>(spec.n_group));
      for (int g = 0; g < spec.n_group; ++g) {
        std::vector<float> members(choice.begin() + g * per, choice.begin() + (g + 1) * per);
        std::sort(members.begin(), members.end(), std::greater<>());
        group_score[g] = spec.grouping == RouterGrouping::kGroupMax
                             ? members[0]
                             : members[0] + (per > 1 ? members[1] : 0.0f);
      }
      const std::vector<int> kept = top_k_indices(group_score, spec.topk_group);
      for (int g = 0; g < spec.n_group; ++g)
        if (std::find(kept.begin(), kept.end(), g) == kept.end())
          for (int e = g * per; e < (g + 1) * per; ++e)
            choice[e] = -std::numeric_limits<float>::infinity();
    }
    const std::vector<int> chosen = top_k_indices(choice, k);
    float sum = 0.0f;
    for (int j = 0; j < k; ++j) sum += score[chosen[j]];
    const float denominator = spec.scoring == RouterScoring::kSigmoid ? sum + 1e-20f : sum;
    for (int j = 0; j < k; ++j) {
      float w = score[chosen[j]];
      if (spec.norm_topk_prob) w /= denominator;
      pe[t * k + j] = chosen[j];
      pw[t * k + j] = static_cast<float>(w * spec.routed_scaling_factor);
    }
  }
}

}  // namespace refinery::backend::cpu
