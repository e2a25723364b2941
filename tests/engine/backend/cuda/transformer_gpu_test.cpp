// Whole models on the CUDA backend with f32 activations (the bf16 engine is tested against
// transformers in transformer_bf16_gpu_test.cpp): every fixture of tests/fixtures/models runs through the
// Transformer on both backends, and the CUDA logits must match the CPU logits within
// 1e-4 · max|logit| (f32 checkpoints), or 3e-2 · max|logit| where a linear has bf16 weights (its
// input is rounded to bf16 on the GPU). Also a decode step against the KV cache, and the
// LanguageModel seam with device "cuda".
#include "../../model/model_test_util.hpp"
#include "cuda_test_util.hpp"
#include "engine/model/language_model.hpp"

namespace refinery {
namespace {

double tolerance(const std::string& fixture) {
  return fixture == "llama_bf16" || fixture == "deepseek_v3_fp8" ? 3e-2 : 1e-4;
}

class TransformerGpu : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformerGpu, LogitsMatchCpuBackend) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const std::string name = GetParam();
  const auto dir = model::test::fixtures_dir() / name;
  auto on_cpu = model::Transformer::load(dir, backend::make_cpu_backend(0));
  auto on_gpu = model::Transformer::load(dir, backend::make_cuda_backend(0, DType::kF32));
  const model::test::Reference ref(name);
  int sequences = 0;
  for (int i = 0; ref.has("input_ids_" + std::to_string(i)); ++i, ++sequences) {
    const auto ids = ref.ids("input_ids_" + std::to_string(i));
    const Tensor want = on_cpu->forward(ids);
    const Tensor got = on_gpu->forward(ids);
    ASSERT_EQ(got.device(), Device::kCUDA);
    EXPECT_TRUE(cuda_test::close(str(name, " sequence ", i, " logits"), got, want,
                                 tolerance(name) * cuda_test::max_abs(want)));
  }
  EXPECT_GE(sequences, 1) << name;
}

// Prefill then one decode token through the KV cache (attention with S > T, rope at an offset).
TEST_P(TransformerGpu, DecodeStepMatchesCpuBackend) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const std::string name = GetParam();
  const auto dir = model::test::fixtures_dir() / name;
  auto on_cpu = model::Transformer::load(dir, backend::make_cpu_backend(0));
  auto on_gpu = model::Transformer::load(dir, backend::make_cuda_backend(0, DType::kF32));
  // The longest stored sequence (23 tokens): 22 of prefill, then one decode step.
  const auto ids = model::test::Reference(name).ids("input_ids_2");
  ASSERT_GE(ids.size(), 2u);
  const std::vector<int32_t> prefix(ids.begin(), ids.end() - 1), last{ids.back()};
  auto cache_cpu = on_cpu->make_cache(static_cast<int64_t>(ids.size()));
  auto cache_gpu = on_gpu->make_cache(2);  // grows: exercises the cache copy on the device
  on_cpu->forward(prefix, &cache_cpu);
  on_gpu->forward(prefix, &cache_gpu);
  const Tensor want = on_cpu->forward(last, &cache_cpu);
  const Tensor got = on_gpu->forward(last, &cache_gpu);
  EXPECT_TRUE(cuda_test::close(str(name, " decode step logits"), got, want,
                               tolerance(name) * cuda_test::max_abs(want)));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TransformerGpu,
                         ::testing::ValuesIn(model::test::fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(LanguageModelGpu, CudaDeviceScoresLikeCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const auto dir = model::test::fixtures_dir() / "llama_gqa_llama3";
  model::LanguageModelOptions cpu_options, gpu_options;
  gpu_options.device = "cuda";
  auto cpu_model = model::open_language_model(dir, cpu_options);
  auto gpu_model = model::open_language_model(dir, gpu_options);
  const auto ids = model::test::Reference("llama_gqa_llama3").ids("input_ids_1");
  const int64_t vocab = cpu_model->vocab_size();
  std::vector<float> want(ids.size() * vocab), got(ids.size() * vocab, NAN);
  auto sink = [vocab](std::vector<float>& out) {
    return [&out, vocab](int64_t r0, const float* logits, int64_t rows) {
      std::copy(logits, logits + rows * vocab, out.begin() + r0 * vocab);
    };
  };
  cpu_model->score(ids, sink(want), 3);
  gpu_model->score(ids, sink(got), 3);
  // The LanguageModel runs the engine's bf16 activations: the transformer_bf16 bound.
  const double scale = model::test::max_abs(want);
  EXPECT_LE(model::test::max_abs_diff(got, want), 3e-2 * scale);
}

// score_top_k on the GPU (fused LM head) against the CPU engine's top-k: the same tokens except
// where the CPU's log-probs of two candidates are within the bf16 engine's error, log-probs within
// that error.
TEST(LanguageModelGpu, CudaTopKMatchesCpuTopK) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const auto dir = model::test::fixtures_dir() / "deepseek_v3_noaux";
  model::LanguageModelOptions cpu_options, gpu_options;
  gpu_options.device = "cuda";
  auto cpu_model = model::open_language_model(dir, cpu_options);
  auto gpu_model = model::open_language_model(dir, gpu_options);
  const auto ids = model::test::Reference("deepseek_v3_noaux").ids("input_ids_2");
  const int64_t k = 10, t = static_cast<int64_t>(ids.size());
  std::vector<int32_t> want_i(t * k), got_i(t * k, -1);
  std::vector<float> want_p(t * k), got_p(t * k, NAN);
  auto sink = [k](std::vector<int32_t>& oi, std::vector<float>& op) {
    return [&oi, &op, k](int64_t r0, const int32_t* i, const float* p, int64_t rows) {
      std::copy(i, i + rows * k, oi.begin() + r0 * k);
      std::copy(p, p + rows * k, op.begin() + r0 * k);
    };
  };
  cpu_model->score_top_k(ids, k, sink(want_i, want_p), 5);
  gpu_model->score_top_k(ids, k, sink(got_i, got_p), 4);
  const double tol = 0.05;  // log-prob error of the bf16 engine on this fixture (logits ~ N(0, 1))
  for (int64_t r = 0; r < t; ++r)
    for (int64_t j = 0; j < k; ++j) {
      const int64_t i = r * k + j;
      EXPECT_NEAR(got_p[i], want_p[i], tol) << "row " << r << " rank " << j;
      if (got_i[i] != want_i[i]) {
        // A swap is only acceptable between near-equal candidates.
        const bool near_tie = (j > 0 && want_p[i - 1] - want_p[i] < 2 * tol) ||
                              (j + 1 < k && want_p[i] - want_p[i + 1] < 2 * tol);
        EXPECT_TRUE(near_tie) << "row " << r << " rank " << j << ": token " << got_i[i]
                              << " instead of " << want_i[i];
      }
    }
}

TEST(LanguageModelGpu, CudaDeviceWithoutGpuIsAUserError) {
  if (!cuda::list_devices().empty()) GTEST_SKIP() << "a CUDA device is present";
  model::LanguageModelOptions options;
  options.device = "cuda";
  try {
    model::open_language_model(model::test::fixtures_dir() / "llama_gqa_llama3", options);
    ADD_FAILURE() << "device cuda accepted without a GPU";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser) << e.what();
    EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace refinery
