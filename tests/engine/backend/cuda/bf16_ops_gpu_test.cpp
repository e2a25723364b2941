// The CUDA backend with bf16 activations (what the engine runs) against the CPU backend in f32.
// Inputs are random values rounded to bf16 first, so both backends see identical numbers; the
// CUDA output (poisoned before the run) is widened to f32 and compared with documented bounds:
//   element-wise ops (add, swiglu, rms_norm, rope, copy): one bf16 rounding of the output,
//     |err| <= 2^-8 |ref| (+ 1e-6 |ref|max for the f32 math);
//   linear / moe_experts / attention: bf16 products summed in f32, the output (and for the MoE the
//     gate/up activations) rounded to bf16: |err| <= 2e-2 · max|ref| (the fp32-vs-bf16 gap of a
//     bf16 inference engine; the f32-activation tests bound the arithmetic itself tighter);
//   log_softmax_top_k: the same tokens as the CPU except where two candidates' log-probs are
//     within the bf16 error, log-probs within 2e-2 (logits of scale ~3).
#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;

struct Bf16OpsGpu : ::testing::Test {
  std::shared_ptr<backend::Backend> cpu = backend::make_cpu_backend(1);
  static Tensor widened(const Tensor& bf16_host) {
    Tensor f = Tensor::empty(DType::kF32, bf16_host.shape());
    convert_to_f32(DType::kBF16, bf16_host.data(), f.mutable_data<float>(),
                   static_cast<std::size_t>(f.numel()));
    return f;
  }
  // The same bf16 values for both backends.
  std::pair<Tensor, Tensor> inputs(std::vector<int64_t> shape, uint64_t seed, float scale = 1.0f) {
    const Tensor b = convert(random_f32(std::move(shape), seed, scale), DType::kBF16);
    return {widened(b), gpu(b)};
  }
  // Bound 2^-8 |ref| per element (one bf16 rounding) plus `extra`.
  static std::vector<float> rounding_bound(const Tensor& want) {
    std::vector<float> b = values(want);
    for (float& v : b) v = std::abs(v) * (1.0f / 256.0f);
    return b;
  }
};

TEST_F(Bf16OpsGpu, ElementwiseOpsRoundOnce) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  ASSERT_EQ(be->activation_dtype(), DType::kBF16);
  const int64_t rows = 37, d = 333;
  const auto [a, a_gpu] = inputs({rows, d}, 1);
  const auto [b, b_gpu] = inputs({rows, d}, 2);
  Tensor want = Tensor::empty(DType::kF32, {rows, d});
  Tensor got = poisoned_gpu({rows, d}, DType::kBF16);
  cpu->add(a, b, want);
  be->add(a_gpu, b_gpu, got);
  EXPECT_TRUE(close("add bf16", got, want, 1e-6, rounding_bound(want)));
  cpu->swiglu(a, b, want);
  got = poisoned_gpu({rows, d}, DType::kBF16);
  be->swiglu(a_gpu, b_gpu, got);
  EXPECT_TRUE(close("swiglu bf16", got, want, 1e-6 * max_abs(want), rounding_bound(want)));
  const Tensor w = convert(random_f32({d}, 3), DType::kBF16);
  cpu->rms_norm(a, w, 1e-6f, want);
  got = poisoned_gpu({rows, d}, DType::kBF16);
  be->rms_norm(a_gpu, w, 1e-6f, got);
  EXPECT_TRUE(close("rms_norm bf16", got, want, 1e-5 * max_abs(want), rounding_bound(want)));
  Tensor want_cols = Tensor::empty(DType::kF32, {rows, 50});
  Tensor got_cols = poisoned_gpu({rows, 50}, DType::kBF16);
  cpu->copy_columns(a, 7, want_cols, 3, 40);
  be->copy_columns(a_gpu, 7, got_cols, 3, 40);
  // Only the copied columns are defined.
  const std::vector<float> g = values(got_cols), wv = values(want_cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 3; c < 43; ++c) ASSERT_EQ(g[r * 50 + c], wv[r * 50 + c]) << r << "," << c;
}

// copy_columns on MLA's aligned shapes takes the 16-byte vector path (width, strides and offsets
// multiples of 8 bf16): kv [T·H, 256] -> keys [T·H, 192] (nope part), values [T·H, 128], and the
// shared rope key [T, 64] broadcast to the H rows of its token (repeat = H). Exact copies.
TEST_F(Bf16OpsGpu, CopyColumnsVectorPathIsExact) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const int64_t t = 75, heads = 3;
  const auto [kv, kv_gpu] = inputs({t * heads, 256}, 31);
  const auto [pe, pe_gpu] = inputs({t, 64}, 32);
  Tensor want_k = Tensor::empty(DType::kF32, {t * heads, 192});
  Tensor want_v = Tensor::empty(DType::kF32, {t * heads, 128});
  Tensor got_k = poisoned_gpu({t * heads, 192}, DType::kBF16);
  Tensor got_v = poisoned_gpu({t * heads, 128}, DType::kBF16);
  cpu->copy_columns(kv, 0, want_k, 0, 128);
  cpu->copy_columns(kv, 128, want_v, 0, 128);
  cpu->copy_columns(pe, 0, want_k, 128, 64);
  be->copy_columns(kv_gpu, 0, got_k, 0, 128);
  be->copy_columns(kv_gpu, 128, got_v, 0, 128);
  be->copy_columns(pe_gpu, 0, got_k, 128, 64);
  EXPECT_TRUE(close("copy_columns keys (vector path)", got_k, want_k, 0.0));
  EXPECT_TRUE(close("copy_columns values (vector path)", got_v, want_v, 0.0));
}

TEST_F(Bf16OpsGpu, LinearWritesBf16AndF32) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  for (auto [t, in, out] : {std::tuple<int64_t, int64_t, int64_t>{1, 72, 40}, {77, 200, 333},
                            {300, 1000, 129}}) {
    const auto [x, x_gpu] = inputs({t, in}, 10 + t);
    backend::LinearWeight w;
    w.name = "bf16 linear";
    w.storage = backend::DenseWeight{convert(random_f32({out, in}, 11 + t, 0.05f), DType::kBF16)};
    Tensor want = Tensor::empty(DType::kF32, {t, out});
    cpu->linear(x, w, want);
    for (DType y_dtype : {DType::kBF16, DType::kF32}) {
      Tensor got = poisoned_gpu({t, out}, y_dtype);
      be->linear(x_gpu, w, got);
      EXPECT_TRUE(close(str("linear -> ", dtype_name(y_dtype), " [", t, "x", in, "x", out, "]"),
                        got, want, (y_dtype == DType::kF32 ? 1e-3 : 2e-2) * max_abs(want)));
    }
  }
}

TEST_F(Bf16OpsGpu, AttentionFlashAndSimplePaths) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  struct Case { int64_t t, s, heads, kv, dk, dv; };
  // t >= 16 with supported widths takes the flash kernel; t = 1 and dk 40 the simple one.
  for (const Case c : {Case{77, 77, 4, 2, 64, 64}, Case{20, 133, 4, 4, 192, 128},
                       Case{1, 50, 8, 2, 128, 128}, Case{33, 33, 2, 1, 40, 40}}) {
    const auto [q, q_gpu] = inputs({c.t, c.heads, c.dk}, 20 + c.t);
    const auto [k, k_gpu] = inputs({c.s, c.kv, c.dk}, 21 + c.s);
    const auto [v, v_gpu] = inputs({c.s, c.kv, c.dv}, 22 + c.s);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
    Tensor want = Tensor::empty(DType::kF32, {c.t, c.heads, c.dv});
    cpu->attention(q, k, v, scale, want);
    Tensor got = poisoned_gpu({c.t, c.heads, c.dv}, DType::kBF16);
    be->attention(q_gpu, k_gpu, v_gpu, scale, got);
    EXPECT_TRUE(close(str("attention t=", c.t, " s=", c.s, " dk=", c.dk), got, want,
                      1e-2 * max_abs(want), rounding_bound(want)));
  }
}

TEST_F(Bf16OpsGpu, GroupedExpertsMatchCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const int64_t hidden = 136, inter = 72, e_count = 9, k = 3;
  uint64_t seed = 500;
  const std::vector<backend::ExpertWeights> experts =
      random_experts(e_count, inter, hidden, seed, 0.1f, DType::kBF16);
  for (int64_t t : {1, 19, 250}) {
    std::mt19937_64 rng(++seed);
    std::vector<int32_t> chosen;
    for (int64_t i = 0; i < t; ++i) {  // distinct experts from {0..7}: expert 8 never runs
      std::vector<int32_t> pool{0, 1, 2, 3, 4, 5, 6, 7};
      std::shuffle(pool.begin(), pool.end(), rng);
      chosen.insert(chosen.end(), pool.begin(), pool.begin() + k);
    }
    const Tensor ids = Tensor::copy_of(DType::kI32, {t, k}, chosen.data());
    const Tensor w = random_f32({t, k}, ++seed);
    const auto [x, x_gpu] = inputs({t, hidden}, ++seed);
    Tensor want = Tensor::empty(DType::kF32, {t, hidden});
    cpu->moe_experts(x, ids, w, experts, want);
    Tensor got = poisoned_gpu({t, hidden}, DType::kBF16);
    be->moe_experts(x_gpu, gpu(ids), gpu(w), experts, got);
    EXPECT_TRUE(close(str("moe_experts bf16 T=", t), got, want, 2e-2 * max_abs(want)));
  }
}

TEST_F(Bf16OpsGpu, LogSoftmaxTopKMatchesCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  // vocab 40003: three 16384-id chunks, the last one partial.
  const int64_t t = 45, hidden = 96, vocab = 40003, k = 64;
  const auto [x, x_gpu] = inputs({t, hidden}, 900);
  backend::LinearWeight head;
  head.name = "lm_head";
  head.storage = backend::DenseWeight{convert(random_f32({vocab, hidden}, 901, 0.3f), DType::kBF16)};
  Tensor want_i = Tensor::empty(DType::kI32, {t, k}), want_p = Tensor::empty(DType::kF32, {t, k});
  cpu->log_softmax_top_k(x, head, k, {}, want_i, want_p);
  Tensor got_i = poisoned_gpu({t, k}, DType::kI32), got_p = poisoned_gpu({t, k});
  be->log_softmax_top_k(x_gpu, head, k, {}, got_i, got_p);
  const auto gi = ints(got_i), wi = ints(want_i);
  const auto gp = values(got_p), wp = values(want_p);
  const double tol = 2e-2;
  for (int64_t r = 0; r < t; ++r)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = r * k + j;
      ASSERT_NEAR(gp[i], wp[i], tol) << "row " << r << " rank " << j;
      if (j > 0) {
        ASSERT_GE(gp[i - 1], gp[i]) << "row " << r << " not sorted at rank " << j;
      }
      if (gi[i] != wi[i]) {
        const bool near_tie = (j > 0 && wp[i - 1] - wp[i] < 2 * tol) ||
                              (j + 1 < k && wp[i] - wp[i + 1] < 2 * tol);
        EXPECT_TRUE(near_tie) << "row " << r << " rank " << j << ": token " << gi[i]
                              << " instead of " << wi[i];
      }
    }
}

// The priority sample (priority_sampling.hpp): the GPU ranks by the same noisy keys as the CPU and
// makes the same estimates. Both see the same bf16 inputs and weights, so the logits differ only
// by f32 summation order (~1e-5): a row may pick another id only where two keys tie that closely
// (allowed for at most one row), and the estimates agree to 1e-3.
TEST_F(Bf16OpsGpu, LogSoftmaxPrioritySampleMatchesCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  // vocab 40003 (partial last chunk); 4100 rows cross the 4096-row block (row keys continue).
  for (const auto& [t, k] : {std::pair<int64_t, int64_t>{45, 64}, {4100, 7}, {3, 1023}}) {
    const int64_t hidden = 96, vocab = 40003;
    const auto [x, x_gpu] = inputs({t, hidden}, 910 + k);
    backend::LinearWeight head;
    head.name = "lm_head";
    head.storage =
        backend::DenseWeight{convert(random_f32({vocab, hidden}, 911, 0.3f), DType::kBF16)};
    const backend::TopKSampling sampling{true, 77, 5000};
    Tensor want_i = Tensor::empty(DType::kI32, {t, k}), want_p = Tensor::empty(DType::kF32, {t, k});
    cpu->log_softmax_top_k(x, head, k, sampling, want_i, want_p);
    Tensor got_i = poisoned_gpu({t, k}, DType::kI32), got_p = poisoned_gpu({t, k});
    be->log_softmax_top_k(x_gpu, head, k, sampling, got_i, got_p);
    const auto gi = ints(got_i), wi = ints(want_i);
    const auto gp = values(got_p), wp = values(want_p);
    int64_t other_rows = 0;
    for (int64_t r = 0; r < t; ++r) {
      bool same = true;
      double total = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t i = r * k + j;
        same = same && gi[i] == wi[i];
        total += std::exp(static_cast<double>(gp[i]));
        if (j > 0) {
          ASSERT_GE(gp[i - 1], gp[i]) << "row " << r << " not sorted at rank " << j;
        }
      }
      ASSERT_NEAR(total, 1.0, 1e-4) << "row " << r;
      if (!same) {
        ++other_rows;
        continue;
      }
      for (int64_t j = 0; j < k; ++j)
        ASSERT_NEAR(gp[r * k + j], wp[r * k + j], 1e-3) << "t " << t << " row " << r << " rank " << j;
    }
    EXPECT_LE(other_rows, 1) << "t " << t << " k " << k;
  }
}

}  // namespace
}  // namespace refinery
