// CUDA linear vs the CPU linear for every weight format. Error bounds per element:
//   f32, f16 (widened exactly): f32 GEMMs with different summation orders:
//     |Δ| <= 1e-5 · Σ_i |x_i||w_i| + 1e-6 · max|y|;
//   bf16: x is rounded to bf16 (relative error <= 2^-9 per element) before the GEMM:
//     |Δ| <= 2^-8 · Σ_i |x_i||w_i| + 1e-6 · max|y|;
//   fp8 block: dequantized weights (e4m3 x scale) rounded to bf16 and x rounded to bf16, each
//     <= 2^-9 relative: |Δ| <= 1.05 · 2^-8 · Σ_i |x_i||w_i| + 1e-6 · max|y|.
// Σ_i |x_i||w_i| is computed by the CPU backend on |x| and |W|.
#include <cmath>

#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::DenseWeight;
using backend::Fp8BlockWeight;

const double kFp8Rel = 1.05 * std::ldexp(1.0, -8);
using backend::LinearWeight;

Tensor abs_of(const Tensor& t) {  // f32 |t| of any float host tensor
  Tensor out = t.to_f32();
  float* p = out.mutable_data<float>();
  for (int64_t i = 0; i < out.numel(); ++i) p[i] = std::abs(p[i]);
  return out;
}

// Random E4M3 weight with values drawn from N(0, 1) (no NaN bytes) and positive block scales.
Fp8BlockWeight random_fp8(int64_t out, int64_t in, int block, uint64_t seed) {
  Fp8BlockWeight w;
  w.weight = convert(random_f32({out, in}, seed, 2.0f), DType::kF8E4M3);
  const int64_t so = (out + block - 1) / block, si = (in + block - 1) / block;
  w.scale_inv = Tensor::empty(DType::kF32, {so, si});
  std::mt19937_64 rng(seed + 1);
  std::uniform_real_distribution<float> u(0.001f, 0.01f);
  for (int64_t i = 0; i < so * si; ++i) w.scale_inv.mutable_data<float>()[i] = u(rng);
  w.block_out = w.block_in = block;
  return w;
}

void check_linear(backend::Backend& cpu, backend::Backend& be, const LinearWeight& w, int64_t t,
                  double rel, uint64_t seed) {
  const int64_t in = w.in_features(), out = w.out_features();
  const Tensor x = random_f32({t, in}, seed);
  Tensor want = Tensor::empty(DType::kF32, {t, out});
  cpu.linear(x, w, want);
  // Bound: Σ|x||w| through the same CPU op on absolute values (without bias).
  LinearWeight abs_w;
  abs_w.name = w.name + " (abs)";
  if (const auto* d = std::get_if<DenseWeight>(&w.storage)) {
    abs_w.storage = DenseWeight{abs_of(d->weight)};
  } else {
    const auto& f = std::get<Fp8BlockWeight>(w.storage);
    Fp8BlockWeight a = f;
    Tensor q = f.weight.clone();  // clear the sign bits: |e4m3|
    for (int64_t i = 0; i < q.numel(); ++i) q.mutable_data<uint8_t>()[i] &= 0x7f;
    a.weight = q;
    abs_w.storage = a;
  }
  Tensor abs_dot = Tensor::empty(DType::kF32, {t, out});
  cpu.linear(abs_of(x), abs_w, abs_dot);
  std::vector<float> bound = values(abs_dot);
  for (float& b : bound) b = static_cast<float>(b * rel);

  Tensor got = poisoned_gpu({t, out});
  be.linear(gpu(x), w, got);
  EXPECT_TRUE(close(str("linear ", w.describe(), w.bias.defined() ? " +bias" : "", " T=", t), got,
                    want, 1e-6 * max_abs(want), bound));
}

TEST(LinearGpu, DenseWeightsMatchCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0);
  uint64_t seed = 100;
  for (auto [in, out] : {std::pair<int64_t, int64_t>{72, 200}, {200, 72}, {130, 257}, {1, 5}})
    for (DType dt : {DType::kF32, DType::kBF16, DType::kF16})
      for (bool bias : {false, true})
        for (int64_t t : {1, 7, 33}) {
          LinearWeight w;
          w.name = "test.proj";
          w.storage = DenseWeight{convert(random_f32({out, in}, ++seed, 0.2f), dt)};
          if (bias) w.bias = convert(random_f32({out}, ++seed), dt);
          check_linear(*cpu, *be, w, t, dt == DType::kBF16 ? std::ldexp(1.0, -8) : 1e-5, ++seed);
        }
}

TEST(LinearGpu, Fp8BlockWeightsMatchCpu) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0);
  uint64_t seed = 500;
  // Partial last blocks in both directions, and a small block size for many blocks.
  for (auto [in, out, block] :
       {std::tuple<int64_t, int64_t, int>{300, 200, 128}, {72, 200, 16}, {256, 128, 128}})
    for (int64_t t : {1, 7, 33}) {
      LinearWeight w;
      w.name = "test.fp8";
      w.storage = random_fp8(out, in, block, ++seed);
      if (t == 7) w.bias = convert(random_f32({out}, ++seed), DType::kBF16);
      check_linear(*cpu, *be, w, t, kFp8Rel, ++seed);
    }
}

// A weight above the 16 Mi-element scratch is widened and multiplied in several row chunks.
TEST(LinearGpu, LargeWidenedWeightsAreChunked) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(0);
  auto be = backend::make_cuda_backend(0);
  LinearWeight fp8;
  fp8.name = "test.large_fp8";
  fp8.storage = random_fp8(4352, 4096, 128, 900);
  check_linear(*cpu, *be, fp8, 3, kFp8Rel, 901);
  LinearWeight f16;
  f16.name = "test.large_f16";
  f16.storage = DenseWeight{convert(random_f32({4099, 4097}, 902, 0.05f), DType::kF16)};
  check_linear(*cpu, *be, f16, 2, 1e-5, 903);
}

// Read-only host weights (memory-mapped checkpoints) are cached on the device; results stay right
// on the second call.
TEST(LinearGpu, ReadOnlyHostWeightsAreReused) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0);
  const Tensor owned = random_f32({40, 72}, 950);
  auto keep = std::make_shared<Tensor>(owned);
  LinearWeight w;
  w.name = "test.mapped";
  w.storage = DenseWeight{Tensor::from_external(DType::kF32, {40, 72}, owned.data(), keep)};
  ASSERT_TRUE(std::get<DenseWeight>(w.storage).weight.is_read_only());
  check_linear(*cpu, *be, w, 7, 1e-5, 951);
  check_linear(*cpu, *be, w, 33, 1e-5, 952);
}

}  // namespace
}  // namespace refinery
