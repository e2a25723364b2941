// CUDA route and moe_experts vs the CPU backend. Routing: the chosen experts must be identical (in
// order) and the weights within 1e-6 relative (expf vs std::exp). moe_experts: f32 experts within
// 1e-5 · max|y|; bf16 experts (activations rounded to bf16 before each GEMM) within 2e-2 · max|y|.
#include <algorithm>
#include <cmath>
#include <string>

#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::RouterGrouping;
using backend::RouterScoring;
using backend::RouterSpec;

RouterSpec spec(int e, int k, RouterScoring scoring, RouterGrouping grouping, int n_group,
                int topk_group, bool norm, double scaling) {
  RouterSpec s;
  s.num_experts = e;
  s.top_k = k;
  s.scoring = scoring;
  s.grouping = grouping;
  s.n_group = n_group;
  s.topk_group = topk_group;
  s.norm_topk_prob = norm;
  s.routed_scaling_factor = scaling;
  return s;
}

TEST(RouteGpu, MatchesCpuForEveryRouterVariant) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0);
  struct Case {
    const char* name;
    RouterSpec spec;
    bool bias;
  };
  const Case cases[] = {
      {"mixtral softmax top-2 of 8",
       spec(8, 2, RouterScoring::kSoftmax, RouterGrouping::kNone, 1, 1, true, 1.0), false},
      {"qwen2_moe softmax top-4 of 60 unnormalized",
       spec(60, 4, RouterScoring::kSoftmax, RouterGrouping::kNone, 1, 1, false, 1.0), false},
      {"deepseek_v2 group max",
       spec(64, 6, RouterScoring::kSoftmax, RouterGrouping::kGroupMax, 8, 3, false, 16.0), false},
      {"deepseek_v3 noaux_tc",
       spec(256, 8, RouterScoring::kSigmoid, RouterGrouping::kGroupTop2, 8, 4, true, 2.5), true},
      {"sigmoid one expert per group",
       spec(12, 3, RouterScoring::kSigmoid, RouterGrouping::kGroupTop2, 12, 5, true, 1.0), true},
      {"top-k of all", spec(5, 5, RouterScoring::kSoftmax, RouterGrouping::kNone, 1, 1, true, 1.0),
       false},
  };
  uint64_t seed = 3000;
  for (const Case& c : cases)
    for (int64_t t : {1, 7, 33}) {
      const int e = c.spec.num_experts, k = c.spec.top_k;
      const Tensor logits = random_f32({t, e}, ++seed, 2.0f);
      Tensor bias;
      if (c.bias) bias = convert(random_f32({e}, ++seed, 0.1f), DType::kBF16);
      Tensor want_e = Tensor::empty(DType::kI32, {t, k}),
             want_w = Tensor::empty(DType::kF32, {t, k});
      cpu->route(logits, bias, c.spec, want_e, want_w);
      Tensor got_e = poisoned_gpu({t, k}, DType::kI32), got_w = poisoned_gpu({t, k});
      be->route(gpu(logits), bias, c.spec, got_e, got_w);
      EXPECT_EQ(ints(got_e), ints(want_e)) << c.name << " T=" << t;
      EXPECT_TRUE(close(str("route weights ", c.name, " T=", t), got_w, want_w,
                        1e-6 * std::max(1.0, max_abs(want_w))));
    }
}

TEST(MoeGpu, ExpertsMatchCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0);
  const int64_t hidden = 72, inter = 40, e_count = 6, k = 2;
  uint64_t seed = 4000;
  for (DType dt : {DType::kF32, DType::kBF16}) {
    const std::vector<backend::ExpertWeights> experts =
        random_experts(e_count, inter, hidden, seed, 0.2f, dt);
    for (int64_t t : {1, 7, 33}) {
      // Distinct experts per token from {0, .., 4}: expert 5 never runs.
      std::mt19937_64 rng(++seed);
      std::vector<int32_t> chosen;
      for (int64_t i = 0; i < t; ++i) {
        const int32_t a = static_cast<int32_t>(rng() % 5);
        chosen.push_back(a);
        chosen.push_back(static_cast<int32_t>((a + 1 + rng() % 4) % 5));
      }
      const Tensor ids = Tensor::copy_of(DType::kI32, {t, k}, chosen.data());
      const Tensor w = random_f32({t, k}, ++seed);
      const Tensor x = random_f32({t, hidden}, ++seed);
      Tensor want = Tensor::empty(DType::kF32, {t, hidden});
      cpu->moe_experts(x, ids, w, experts, want);
      Tensor got = poisoned_gpu({t, hidden});
      be->moe_experts(gpu(x), gpu(ids), gpu(w), experts, got);
      const double rel = dt == DType::kBF16 ? 2e-2 : 1e-5;
      EXPECT_TRUE(
          close(str("moe_experts ", dtype_name(dt), " T=", t), got, want, rel * max_abs(want)));
    }
  }
}

// The two routes of the CUDA moe_experts on bf16 experts of one shape (the stack): routed on the
// device into our grouped GEMM (REFINERY_MOE_GEMM=ggemm: wgmma with the fused SwiGLU on compute
// 9.0, mma.sync elsewhere or with REFINERY_GGEMM_KERNEL=mma) and routed on the host into cuBLAS
// (=cublas), all against the CPU. 64 experts, top-6, uneven
// routing (a quarter of the pairs go to expert 3: several 128-row tiles; experts 60-63 get none),
// f32 and bf16 activations; T = 1 exercises one row per expert.
TEST(MoeGpu, DeviceRoutedGroupedGemmMatchesCpuAndHostRoute) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  const int64_t hidden = 136, inter = 88, e_count = 64, k = 6;
  uint64_t seed = 7000;
  const std::vector<backend::ExpertWeights> experts =
      random_experts(e_count, inter, hidden, seed, 0.2f, DType::kBF16);
  for (const DType act : {DType::kF32, DType::kBF16}) {
    auto be = backend::make_cuda_backend(0, act);
    for (int64_t t : {1, 37, 700}) {
      std::mt19937_64 rng(++seed);
      std::vector<int32_t> chosen;
      for (int64_t i = 0; i < t; ++i) {
        std::vector<int32_t> row;
        if (rng() % 4 == 0) row.push_back(3);
        while (static_cast<int64_t>(row.size()) < k) {
          const int32_t e = static_cast<int32_t>(rng() % 60);
          if (std::find(row.begin(), row.end(), e) == row.end()) row.push_back(e);
        }
        chosen.insert(chosen.end(), row.begin(), row.end());
      }
      const Tensor ids = Tensor::copy_of(DType::kI32, {t, k}, chosen.data());
      const Tensor w = random_f32({t, k}, ++seed);
      // x rounded to bf16 for both backends; the CPU computes in f32.
      const Tensor x_bf16 = convert(random_f32({t, hidden}, ++seed), DType::kBF16);
      const Tensor x_f32 = Tensor::copy_of(DType::kF32, {t, hidden}, values(x_bf16).data());
      const Tensor x = act == DType::kBF16 ? x_bf16 : x_f32;
      Tensor want = Tensor::empty(DType::kF32, {t, hidden});
      cpu->moe_experts(x_f32, ids, w, experts, want);
      // ggemm: wgmma with SwiGLU fused on compute 9.0 (the default warp-specialized 128 x 256
      // tile, the warp-specialized 128 x 128 and the 128 x 128 with block barriers); ggemm+mma: the mma.sync kernel and the separate SwiGLU kernel
      // (REFINERY_GGEMM_KERNEL=mma); cublas: the host-routed path.
      for (const std::string route :
           {"ggemm", "ggemm+ws128x128", "ggemm+128x128", "ggemm+mma", "cublas"}) {
        const bool mma = route == "ggemm+mma";
        const std::string tile =
            route == "ggemm+ws128x128" || route == "ggemm+128x128" ? route.substr(6) : "";
        const ScopedEnv env("REFINERY_MOE_GEMM", route == "cublas" ? "cublas" : "ggemm");
        const ScopedEnv kernel("REFINERY_GGEMM_KERNEL", mma ? "mma" : "auto");
        const ScopedEnv tile_env("REFINERY_GGEMM_TILE", tile.c_str());
        Tensor got = poisoned_gpu({t, hidden}, act);
        be->moe_experts(gpu(x), gpu(ids), gpu(w), experts, got);
        EXPECT_TRUE(close(str("moe_experts ", route, " ", dtype_name(act), " T=", t), got, want,
                          2e-2 * max_abs(want)));
      }
    }
  }
}

}  // namespace
}  // namespace refinery
