// The grouped GEMM kernel (MoE experts) vs a host reference computed in double from the same
// bf16-rounded inputs (the exact values the kernel reads).
//
// Error bound per output element y[r, j] = Σ_i x[r, i] · w[g, j, i]:
//   f32 out:  |got - ref| <= 1e-3 · Σ_i |x[r, i]| |w[g, j, i]| + 1e-6
//   bf16 out: the same + 2^-8 · |ref| (rounding to bf16, 8 significant bits, nearest even).
// Why: the products of two bf16 values are exact in f32 (16 significant bits); only the f32
// accumulation rounds, by at most ~k · 2^-24 · Σ|x||w| in the worst order (k <= 2048: 1.2e-4 of
// it), so 1e-3 is generous, while a wrong fragment layout, a wrong group or a stale pipeline stage
// gives errors of the order of Σ|x||w| itself. The output is poisoned first (NaN / 0x7f7f) so an
// unwritten element fails.
#include "engine/backend/cuda/grouped_gemm.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>

#include "cuda_test_util.hpp"
#include "engine/core/error.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::cuda::grouped_gemm_bf16;
using backend::cuda::grouped_gemm_supports;
using backend::cuda::GroupedGemmArgs;
using backend::cuda::GroupedGemmKernel;

// A seeded random bf16 tensor and its values as floats (what the kernel reads). Element i comes
// from splitmix64(seed, i): a sum of four 16-bit uniforms, centred and scaled to standard deviation
// `scale` (near-normal), generated in parallel. Why not random_f32: the MoE shapes hold 369M
// weights, and the serial normal generator plus two conversions took ~40 s per test on the GPU
// machine.
struct RandomBf16 {
  Tensor bf16;
  std::vector<float> values;
};
RandomBf16 random_bf16(std::vector<int64_t> shape, uint64_t seed, float scale = 1.0f) {
  RandomBf16 r{Tensor::empty(DType::kBF16, std::move(shape)), {}};
  const int64_t n = r.bf16.numel();
  r.values.resize(static_cast<std::size_t>(n));
  constexpr float kUnit = 1.0f / 65536.0f, kSd = 0.57735027f;  // sd of a sum of 4 U(0, 1)
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    float sum = 0.0f;
    for (int part = 0; part < 4; ++part)
      sum += static_cast<float>((z >> (16 * part)) & 0xffffu) * kUnit;
    r.values[i] = (sum - 2.0f) * (scale / kSd);
  }
  convert_from_f32(DType::kBF16, r.values.data(), r.bf16.mutable_data(),
                   static_cast<std::size_t>(n));
  const uint16_t* bits = r.bf16.data<uint16_t>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {  // the bf16 value exactly: its bits are the f32's high half
    const uint32_t word = uint32_t{bits[i]} << 16;
    std::memcpy(&r.values[i], &word, sizeof(float));
  }
  return r;
}

struct Case {
  std::vector<int32_t> sizes;  // rows per group
  int64_t n, k;
  bool sample_rows;  // big shapes: check a subset of rows (every group's ends and every 11th row)
};

// Rows to compare: all, or the first and last row of every group plus every 11th row (11 is
// coprime to the 128-row tile, so the samples visit every position within a tile).
std::vector<int64_t> rows_to_check(const Case& c, const std::vector<int32_t>& offsets) {
  const int64_t rows_total = offsets.back();
  std::vector<char> take(static_cast<std::size_t>(rows_total), c.sample_rows ? 0 : 1);
  if (c.sample_rows) {
    for (int64_t r = 0; r < rows_total; r += 11) take[r] = 1;
    for (std::size_t g = 0; g + 1 < offsets.size(); ++g)
      if (offsets[g + 1] > offsets[g]) take[offsets[g]] = take[offsets[g + 1] - 1] = 1;
  }
  std::vector<int64_t> rows;
  for (int64_t r = 0; r < rows_total; ++r)
    if (take[r]) rows.push_back(r);
  return rows;
}

// The group whose rows [offsets[g], offsets[g + 1]) hold row r (empty groups never do).
int64_t group_of(const std::vector<int32_t>& offsets, int64_t r) {
  return std::upper_bound(offsets.begin(), offsets.end(), r) - offsets.begin() - 1;
}

// Runs the kernel with y in f32 and in bf16 and compares the checked rows with the reference.
// indexed: the problem's rows are picked from a larger x through x_rows (a random map onto the
// rows of an x with 3 more rows than the problem), as the MoE permutation does.
void check_case(const Case& c, uint64_t seed, const std::string& label,
                GroupedGemmKernel kernel, bool indexed = false) {
  const int64_t groups = static_cast<int64_t>(c.sizes.size());
  std::vector<int32_t> offsets(c.sizes.size() + 1, 0);
  std::partial_sum(c.sizes.begin(), c.sizes.end(), offsets.begin() + 1);
  const int64_t rows_total = offsets.back();
  ASSERT_TRUE(grouped_gemm_supports(c.n, c.k));

  const int64_t x_count = indexed ? rows_total + 3 : rows_total;
  const RandomBf16 xr = random_bf16({x_count, c.k}, seed),
                   wr = random_bf16({groups, c.n, c.k}, seed + 1, 0.05f);
  const Tensor &x = xr.bf16, &w = wr.bf16;
  const std::vector<float>& xv = xr.values;
  const std::vector<float>& wv = wr.values;
  std::vector<int32_t> x_rows(static_cast<std::size_t>(rows_total));
  std::mt19937_64 pick(seed + 2);
  for (int64_t r = 0; r < rows_total; ++r)
    x_rows[r] = indexed ? static_cast<int32_t>(pick() % x_count) : static_cast<int32_t>(r);
  const std::vector<int64_t> rows = rows_to_check(c, offsets);

  // Reference and bound for the checked rows: want/bound [rows.size(), n].
  const int64_t checked = static_cast<int64_t>(rows.size());
  Tensor want = Tensor::empty(DType::kF32, {checked, c.n});
  std::vector<float> abs_sum(static_cast<std::size_t>(checked * c.n));
  float* wp = want.mutable_data<float>();
  // Rows in parallel (OpenMP): the double loops take minutes on the MoE shapes otherwise.
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t ri = 0; ri < checked; ++ri) {
    const int64_t r = rows[ri], g = group_of(offsets, r);
    const float* xr = &xv[int64_t{x_rows[r]} * c.k];
    for (int64_t j = 0; j < c.n; ++j) {
      const float* wr = &wv[(g * c.n + j) * c.k];
      double acc = 0.0, acc_abs = 0.0;
      for (int64_t i = 0; i < c.k; ++i) {
        const double prod = double(xr[i]) * double(wr[i]);
        acc += prod;
        acc_abs += std::abs(prod);
      }
      wp[ri * c.n + j] = static_cast<float>(acc);
      abs_sum[ri * c.n + j] = static_cast<float>(acc_abs);
    }
  }

  const Tensor x_gpu = gpu(x), w_gpu = gpu(w);
  const Tensor off_gpu = gpu(Tensor::copy_of(DType::kI32, {groups + 1}, offsets.data()));
  const Tensor rows_gpu =
      gpu(Tensor::copy_of(DType::kI32, {std::max<int64_t>(rows_total, 1)}, x_rows.data()));
  for (const bool y_f32 : {true, false}) {
    const DType y_dtype = y_f32 ? DType::kF32 : DType::kBF16;
    Tensor y = poisoned_gpu({rows_total, c.n}, y_dtype);
    const GroupedGemmArgs args{x_gpu.data(), w_gpu.data(), y.mutable_data(),
                               off_gpu.data<int32_t>(), groups, rows_total, c.n, c.k, y_f32,
                               indexed ? rows_gpu.data<int32_t>() : nullptr};
    grouped_gemm_bf16(args, nullptr, kernel);  // default stream: the download below waits for it

    const std::vector<float> yv = values(y);
    Tensor got = Tensor::empty(DType::kF32, {checked, c.n});
    std::vector<float> bound(static_cast<std::size_t>(checked * c.n));
    for (int64_t ri = 0; ri < checked; ++ri)
      for (int64_t j = 0; j < c.n; ++j) {
        const std::size_t at = static_cast<std::size_t>(ri * c.n + j);
        got.mutable_data<float>()[at] = yv[rows[ri] * c.n + j];
        bound[at] = static_cast<float>(1e-3 * abs_sum[at] +
                                       (y_f32 ? 0.0 : std::ldexp(std::abs(double(wp[at])), -8)));
      }
    EXPECT_TRUE(close(str(label, " groups=", groups, " rows=", rows_total, " n=", c.n, " k=", c.k,
                          y_f32 ? " f32" : " bf16", " out (rows: checked subset, in order)"),
                      got, want, 1e-6, bound));
  }
}

// The fused SwiGLU epilogue (GroupedGemmArgs::swiglu; wgmma kernels only): w [groups, 2n, k] holds
// each group's n gate rows then its n up rows, y bf16 [rows, n] = silu(x·gateᵀ) · (x·upᵀ), rows
// through x_rows. Reference in double from the bf16 inputs; bound per element, from the products'
// bounds eg, eu (as check_case) through the derivatives (|silu'| <= 1.1):
//   1.1 · |u| · eg + |silu(g)| · eu + 2^-8 · |ref| (bf16 rounding) + 1e-6.
// The reference is computed once and every tile in `tiles` (REFINERY_GGEMM_TILE values) is checked.
void check_swiglu_case(const Case& c, uint64_t seed, const std::string& label,
                       const std::vector<std::string>& tiles) {
  const int64_t groups = static_cast<int64_t>(c.sizes.size());
  std::vector<int32_t> offsets(c.sizes.size() + 1, 0);
  std::partial_sum(c.sizes.begin(), c.sizes.end(), offsets.begin() + 1);
  const int64_t rows_total = offsets.back(), x_count = rows_total + 3;
  const RandomBf16 xr = random_bf16({x_count, c.k}, seed),
                   wr = random_bf16({groups, 2 * c.n, c.k}, seed + 1, 0.05f);
  const Tensor &x = xr.bf16, &w = wr.bf16;
  const std::vector<float>& xv = xr.values;
  const std::vector<float>& wv = wr.values;
  std::vector<int32_t> x_rows(static_cast<std::size_t>(rows_total));
  std::mt19937_64 pick(seed + 2);
  for (int32_t& r : x_rows) r = static_cast<int32_t>(pick() % x_count);
  const std::vector<int64_t> rows = rows_to_check(c, offsets);
  const int64_t checked = static_cast<int64_t>(rows.size());

  Tensor want = Tensor::empty(DType::kF32, {checked, c.n});
  std::vector<float> bound(static_cast<std::size_t>(checked * c.n));
  float* wp = want.mutable_data<float>();
#pragma omp parallel for schedule(dynamic, 4)
  for (int64_t ri = 0; ri < checked; ++ri) {
    const int64_t r = rows[ri], g = group_of(offsets, r);
    const float* xr = &xv[int64_t{x_rows[r]} * c.k];
    for (int64_t j = 0; j < c.n; ++j) {
      double dot[2] = {0.0, 0.0}, err[2] = {0.0, 0.0};  // gate, up
      for (int half = 0; half < 2; ++half) {
        const float* wr = &wv[(g * 2 * c.n + half * c.n + j) * c.k];
        for (int64_t i = 0; i < c.k; ++i) {
          const double prod = double(xr[i]) * double(wr[i]);
          dot[half] += prod;
          err[half] += 1e-3 * std::abs(prod);
        }
      }
      const double silu = dot[0] / (1.0 + std::exp(-dot[0])), ref = silu * dot[1];
      const std::size_t at = static_cast<std::size_t>(ri * c.n + j);
      wp[at] = static_cast<float>(ref);
      bound[at] = static_cast<float>(1.1 * std::abs(dot[1]) * err[0] + std::abs(silu) * err[1] +
                                     std::ldexp(std::abs(ref), -8) + 1e-6);
    }
  }
  const Tensor x_gpu = gpu(x), w_gpu = gpu(w);
  const Tensor off_gpu = gpu(Tensor::copy_of(DType::kI32, {groups + 1}, offsets.data()));
  const Tensor rows_gpu =
      gpu(Tensor::copy_of(DType::kI32, {std::max<int64_t>(rows_total, 1)}, x_rows.data()));
  for (const std::string& tile_name : tiles) {
    const ScopedEnv tile("REFINERY_GGEMM_TILE", tile_name.c_str());
    Tensor y = poisoned_gpu({rows_total, c.n}, DType::kBF16);
    const GroupedGemmArgs args{x_gpu.data(), w_gpu.data(), y.mutable_data(),
                               off_gpu.data<int32_t>(), groups, rows_total, c.n, c.k, false,
                               rows_gpu.data<int32_t>(), true};
    grouped_gemm_bf16(args, nullptr, GroupedGemmKernel::kWgmma);
    const std::vector<float> yv = values(y);
    Tensor got = Tensor::empty(DType::kF32, {checked, c.n});
    for (int64_t ri = 0; ri < checked; ++ri)
      for (int64_t j = 0; j < c.n; ++j)
        got.mutable_data<float>()[ri * c.n + j] = yv[rows[ri] * c.n + j];
    EXPECT_TRUE(close(str(label, " tile '", tile_name, "' groups=", groups, " rows=", rows_total,
                          " n=", c.n, " k=", c.k, " swiglu bf16 out (rows: checked subset)"),
                      got, want, 1e-6, bound));
  }
}

// 64 uneven groups like the routed experts of a batch: empty ones, a few rows, about a tile, many.
std::vector<int32_t> moe_like_sizes(int groups, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> sizes(static_cast<std::size_t>(groups));
  for (int32_t& s : sizes) {
    switch (rng() % 5) {
      case 0: s = 0; break;
      case 1: s = static_cast<int32_t>(1 + rng() % 20); break;
      case 2: s = static_cast<int32_t>(120 + rng() % 20); break;  // around the 128-row tile
      default: s = static_cast<int32_t>(rng() % 90); break;
    }
  }
  sizes[5] = 300;  // one group with several m tiles (3: the last partial)
  return sizes;
}

std::vector<Case> small_cases() {
  return {
      {{300}, 72, 136, false},                                // 1 group; n, k not tile multiples
      {{0, 5, 128, 0, 129, 1, 200, 0, 77}, 72, 136, false},   // 9 groups: empty first/middle
      {{17, 0, 0, 256, 3, 0, 0, 40, 0}, 264, 520, false},     // k: 17 k tiles > pipeline depth
      {{1, 2, 3}, 8, 8, false},                               // the smallest n and k
      {moe_like_sizes(64, 77), 136, 264, false},              // 64 groups
  };
}

TEST(GroupedGemmGpu, SupportsMultiplesOfEightOnly) {
  if (!cuda::built_with_cuda()) GTEST_SKIP() << cuda::no_device_reason();
  EXPECT_TRUE(grouped_gemm_supports(2816, 2048));
  EXPECT_TRUE(grouped_gemm_supports(2048, 1408));
  EXPECT_TRUE(grouped_gemm_supports(72, 136));
  EXPECT_TRUE(grouped_gemm_supports(8, 8));
  EXPECT_FALSE(grouped_gemm_supports(70, 136));  // n not a multiple of 8
  EXPECT_FALSE(grouped_gemm_supports(72, 100));  // k not a multiple of 8
  EXPECT_FALSE(grouped_gemm_supports(4, 8));
  EXPECT_FALSE(grouped_gemm_supports(0, 8));
  EXPECT_FALSE(grouped_gemm_supports(8, 0));
}

TEST(GroupedGemmGpu, RefusesUnsupportedSizesBeforeTouchingTheDevice) {
  const GroupedGemmArgs args{nullptr, nullptr, nullptr, nullptr, 2, 10, 70, 136, true};
  EXPECT_THROW(grouped_gemm_bf16(args, nullptr), Error);
}

// The kernels to check on this device: mma.sync everywhere, wgmma on compute 9.0 GPUs.
std::vector<std::pair<GroupedGemmKernel, std::string>> kernels_here() {
  std::vector<std::pair<GroupedGemmKernel, std::string>> k{{GroupedGemmKernel::kMmaSync, "mma"}};
  if (backend::cuda::grouped_gemm_wgmma_available()) k.push_back({GroupedGemmKernel::kWgmma, "wgmma"});
  return k;
}

TEST(GroupedGemmGpu, MatchesDoubleReferenceOnUnevenGroups) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  for (const auto& [kernel, name] : kernels_here()) {
    uint64_t seed = 4100;
    for (const Case& c : small_cases()) check_case(c, seed += 10, "grouped gemm " + name, kernel);
  }
}

TEST(GroupedGemmGpu, MatchesDoubleReferenceOnMoeShapes) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  std::vector<int32_t> sizes = moe_like_sizes(64, 91);
  // DeepSeek-V2-Lite expert shapes: gate|up fused (n 2816, k 2048) and down (n 2048, k 1408),
  // ~3000 rows over 64 experts (a subset of the rows is checked to keep the host reference short).
  for (const auto& [kernel, name] : kernels_here()) {
    check_case({sizes, 2816, 2048, true}, 5200, "grouped gemm gate|up " + name, kernel);
    check_case({sizes, 2048, 1408, true}, 5300, "grouped gemm down " + name, kernel);
  }
}

// The other tiles of each kernel (REFINERY_GGEMM_TILE): 128 x 256 for both; for the wgmma kernel
// (default: warp-specialized 128 x 256, persistent (one block per SM walking ~1000 tiles on the
// MoE shapes above, fewer tiles than SMs on the small cases), weights loaded by TMA) also the
// persistent one with cp.async weights, the same tile with one block per tile, the
// warp-specialized 128 x 128 and the 128 x 128 with block-wide barriers; each must agree
// too, with plain and with indexed rows.
TEST(GroupedGemmGpu, OtherTilesMatchDoubleReference) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  for (const auto& [kernel, name] : kernels_here()) {
    for (const std::string tile_name : {"128x256", "pws128x256", "ws128x256", "ws128x128", "128x128"}) {
      if (kernel == GroupedGemmKernel::kMmaSync && tile_name != "128x256") continue;  // wgmma only
      const ScopedEnv tile("REFINERY_GGEMM_TILE", tile_name.c_str());
      const std::string label = str(name, " ", tile_name);
      uint64_t seed = 6100;
      for (const Case& c : small_cases())
        check_case(c, seed += 10, "grouped gemm tile " + label, kernel);
      check_case({moe_like_sizes(64, 93), 2816, 2048, true}, 6300,
                 "grouped gemm tile gate|up " + label, kernel);
      for (const Case& c : small_cases())
        check_case(c, seed += 10, "grouped gemm indexed tile " + label, kernel, true);
    }
  }
}

// Rows picked through x_rows (the MoE permutation fused into the operand load).
TEST(GroupedGemmGpu, IndexedRowsMatchDoubleReference) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  for (const auto& [kernel, name] : kernels_here()) {
    uint64_t seed = 8100;
    for (const Case& c : small_cases())
      check_case(c, seed += 10, "grouped gemm indexed " + name, kernel, true);
    check_case({moe_like_sizes(64, 95), 2816, 2048, true}, 8300,
               "grouped gemm indexed gate|up " + name, kernel, true);
  }
}

// The fused SwiGLU epilogue on every wgmma tile: small uneven groups (n, k not tile multiples, so
// gate rows of a partial tile overlap up rows and past the group's end) and the V2-Lite gate|up
// shape (n 1408, k 2048) with ~1000 tiles for the persistent kernels.
TEST(GroupedGemmGpu, FusedSwigluMatchesDoubleReference) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  if (!backend::cuda::grouped_gemm_wgmma_available()) GTEST_SKIP() << "needs a compute 9.0 GPU";
  const std::vector<std::string> tiles = {"",         "pws128x256", "ws128x256",
                                          "ws128x128", "128x128",    "128x256"};
  uint64_t seed = 9100;
  for (const Case& c : small_cases()) check_swiglu_case(c, seed += 10, "grouped gemm swiglu", tiles);
  check_swiglu_case({moe_like_sizes(64, 97), 1408, 2048, true}, 9300,
                    "grouped gemm swiglu V2-Lite", tiles);
}

TEST(GroupedGemmGpu, WgmmaAvailableExactlyOnComputeNine) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const cuda::DeviceInfo d = cuda::list_devices().at(0);  // the tests run on device 0
  const int major = d.compute_capability_major, minor = d.compute_capability_minor;
  EXPECT_EQ(backend::cuda::grouped_gemm_wgmma_available(), major == 9 && minor == 0);
}

}  // namespace
}  // namespace refinery
