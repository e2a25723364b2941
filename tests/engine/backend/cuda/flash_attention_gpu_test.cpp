// The bf16 flash attention kernel vs a host reference computed in double from the same
// bf16-rounded inputs (the exact values the kernel reads).
//
// Error bound per output element (row i, dim d), with p_j the exact softmax weights (Σ p_j = 1):
//   |got - ref| <= 2^-7 · (|ref| + Σ_j p_j |v_jd|) + 1e-6
// Why: bf16 keeps 8 significant bits, so rounding to it has a relative error <= 2^-8. The kernel
// rounds P to bf16 before the P·V product (|Δ| <= 2^-8 · Σ_j p_j |v_jd|; the row sum uses the
// unrounded f32 P) and rounds the output to bf16 (<= 2^-8 · |ref|, to first order). The f32 parts
// (q·k accumulation, the exp2 approximation, the row sums) are ~1e-6 relative. The bound is twice
// that worst case; a tile-level emulation of the kernel in numpy reached 0.36 of it on these
// shapes, while a wrong fragment layout or mask gives errors of the order of |v|.
// The Hopper kernel (flash_attention_sm90a.cu, forced with REFINERY_ATTN_KERNEL=wgmma) has the same
// error sources (P rounded to bf16 against its 128-key tile's running max instead of a 64-key one,
// the output rounded once) and meets the same bound: a numpy emulation of both kernels' tile
// arithmetic reached 0.40 of it on the shapes below (and 0.25 of the kernel-vs-kernel bound of
// AgreesWithTheMmaKernelOnEveryHead). Its failures print where the bad elements sit
// (error_pattern below) so that a layout bug can be told apart from a pipeline bug on the device.
#include "engine/backend/cuda/flash_attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cuda_test_util.hpp"
#include "engine/core/error.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::cuda::flash_attention_bf16;
using backend::cuda::flash_attention_supports;
using backend::cuda::flash_attention_wgmma_available;
using backend::cuda::flash_attention_wgmma_bf16;
using backend::cuda::flash_attention_wgmma_supports;
using backend::cuda::FlashAttentionArgs;

struct Case {
  int64_t t, s, heads, kv, dk, dv;
  float q_std;  // larger q makes the softmax peaky and the running max move between key tiles
};

// want: [t, heads, dv] f32 reference; bound: the per-element allowance of the file comment.
// heads: which query heads to compute (empty: all); the others keep want = 0, bound = 0.
void reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
               const std::vector<float>& v, float scale, Tensor& want, std::vector<float>& bound,
               const std::vector<int64_t>& heads = {}) {
  want = Tensor::empty(DType::kF32, {c.t, c.heads, c.dv});
  bound.assign(static_cast<std::size_t>(want.numel()), 0.0f);
  float* w = want.mutable_data<float>();
  std::fill(w, w + want.numel(), 0.0f);
  std::vector<bool> wanted(static_cast<std::size_t>(c.heads), heads.empty());
  for (const int64_t h : heads) wanted[static_cast<std::size_t>(h)] = true;
  const int64_t group = c.heads / c.kv;
  std::vector<double> p(static_cast<std::size_t>(c.s));
  for (int64_t i = 0; i < c.t; ++i) {
    const int64_t visible = c.s - c.t + i + 1;
    for (int64_t h = 0; h < c.heads; ++h) {
      if (!wanted[static_cast<std::size_t>(h)]) continue;
      const int64_t kvh = h / group;
      const float* qr = &q[(i * c.heads + h) * c.dk];
      double mx = -INFINITY;
      for (int64_t j = 0; j < visible; ++j) {
        const float* kr = &k[(j * c.kv + kvh) * c.dk];
        double dot = 0.0;
        for (int64_t d = 0; d < c.dk; ++d) dot += double(qr[d]) * double(kr[d]);
        p[j] = dot * double(scale);
        mx = std::max(mx, p[j]);
      }
      double sum = 0.0;
      for (int64_t j = 0; j < visible; ++j) sum += (p[j] = std::exp(p[j] - mx));
      for (int64_t d = 0; d < c.dv; ++d) {
        double acc = 0.0, acc_abs = 0.0;
        for (int64_t j = 0; j < visible; ++j) {
          const double vj = v[(j * c.kv + kvh) * c.dv + d];
          acc += p[j] * vj;
          acc_abs += p[j] * std::abs(vj);
        }
        const int64_t at = (i * c.heads + h) * c.dv + d;
        w[at] = static_cast<float>(acc / sum);
        bound[at] = static_cast<float>(std::ldexp(std::abs(acc / sum) + acc_abs / sum, -7) + 1e-6);
      }
    }
  }
}

TEST(FlashAttentionGpu, SupportsThePromisedHeadWidths) {
  if (!cuda::built_with_cuda()) GTEST_SKIP() << cuda::no_device_reason();
  EXPECT_TRUE(flash_attention_supports(64, 64));
  EXPECT_TRUE(flash_attention_supports(128, 128));
  EXPECT_TRUE(flash_attention_supports(192, 128));  // MLA (DeepSeek-V2/V3)
  EXPECT_TRUE(flash_attention_supports(16, 16));
  EXPECT_TRUE(flash_attention_supports(256, 256));
  EXPECT_FALSE(flash_attention_supports(72, 72));   // not a multiple of 16
  EXPECT_FALSE(flash_attention_supports(128, 192));
  EXPECT_FALSE(flash_attention_supports(0, 0));
  EXPECT_FALSE(flash_attention_supports(512, 512));
}

TEST(FlashAttentionGpu, RefusesUnsupportedWidthsBeforeTouchingTheDevice) {
  const FlashAttentionArgs args{nullptr, nullptr, nullptr, nullptr, 4, 4, 2, 2, 72, 72, 0.1f};
  EXPECT_THROW(flash_attention_bf16(args, nullptr), Error);
}

TEST(FlashAttentionGpu, MatchesDoubleReferenceOnAwkwardShapes) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const Case cases[] = {
      {77, 77, 12, 4, 64, 64, 1.0f},      // GQA 3:1, t not a multiple of 16 or 64
      {5, 133, 16, 16, 128, 128, 1.0f},   // cached prefix: s - t = 128, 3 key tiles
      {1, 1000, 12, 4, 192, 128, 1.0f},   // decode against a long cache, MLA widths
      {300, 300, 16, 16, 192, 128, 1.0f}, // MLA prefill, 5 query tiles (last one partial)
      {130, 200, 4, 1, 128, 128, 8.0f},   // MQA, peaky softmax, offset 70 (not tile aligned)
      {200, 1000, 2, 2, 64, 64, 4.0f},    // many cached keys, several query tiles
      {64, 64, 3, 1, 16, 16, 1.0f},       // exactly one tile; the other widths
      {70, 90, 2, 1, 32, 32, 2.0f},
      {33, 33, 6, 2, 96, 96, 1.0f},
      {65, 129, 2, 2, 256, 256, 2.0f},
      {1, 1, 4, 2, 128, 128, 1.0f},       // the first token
  };
  uint64_t seed = 9000;
  for (const Case& c : cases) {
    ASSERT_TRUE(flash_attention_supports(c.dk, c.dv));
    // Inputs rounded to bf16 once; the reference reads those exact values.
    const Tensor q = convert(random_f32({c.t, c.heads, c.dk}, ++seed, c.q_std), DType::kBF16);
    const Tensor k = convert(random_f32({c.s, c.kv, c.dk}, ++seed), DType::kBF16);
    const Tensor v = convert(random_f32({c.s, c.kv, c.dv}, ++seed), DType::kBF16);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
    Tensor want;
    std::vector<float> bound;
    reference(c, values(q), values(k), values(v), scale, want, bound);

    const Tensor q_gpu = gpu(q), k_gpu = gpu(k), v_gpu = gpu(v);
    Tensor got = poisoned_gpu({c.t, c.heads, c.dv}, DType::kBF16);  // 0x7f7f: 3.4e38 everywhere
    const FlashAttentionArgs args{q_gpu.data(), k_gpu.data(), v_gpu.data(), got.mutable_data(),
                                  c.t, c.s, c.heads, c.kv, c.dk, c.dv, scale};
    flash_attention_bf16(args, nullptr);  // default stream: the download below waits for it
    EXPECT_TRUE(close(str("flash attention T=", c.t, " S=", c.s, " H=", c.heads, " KV=", c.kv,
                          " dk=", c.dk, " dv=", c.dv, " q_std=", c.q_std),
                      got, want, 0.0, bound));
  }
}

// ---- the Hopper kernel (flash_attention_sm90a.cu) ---------------------------------------------

// Where the elements over their bound sit, in the kernel's coordinates (block = 128 query rows,
// warpgroup w = rows 64w.., warp q = rows 16q.. of it, g = row % 8 within the warp's two 8-row
// halves; dims in 64-column V panels and d % 8 = the accumulator column pair 2c, 2c+1), so that a
// failure on the device points at a descriptor, a fragment layout, the mask or the pipeline.
std::string error_pattern(const Case& c, const std::vector<float>& got, const std::vector<float>& want,
                          const std::vector<float>& bound, const std::vector<int64_t>& heads) {
  std::vector<bool> wanted(static_cast<std::size_t>(c.heads), heads.empty());
  for (const int64_t h : heads) wanted[static_cast<std::size_t>(h)] = true;
  int64_t bad = 0, checked = 0;
  int64_t by_slice[8] = {}, by_half[2] = {}, by_panel[4] = {}, by_pair[8] = {};
  int64_t first_block = -1, last_block = -1, first_at[3] = {-1, -1, -1}, worst_at = -1;
  double worst_excess = -1.0;
  for (int64_t i = 0; i < c.t; ++i)
    for (int64_t h = 0; h < c.heads; ++h) {
      if (!wanted[static_cast<std::size_t>(h)]) continue;
      for (int64_t d = 0; d < c.dv; ++d) {
        const std::size_t at = static_cast<std::size_t>((i * c.heads + h) * c.dv + d);
        ++checked;
        const double err = std::abs(double(got[at]) - double(want[at]));
        if (!(err <= double(bound[at]))) {  // NaN counts as bad
          if (bad++ == 0) first_at[0] = i, first_at[1] = h, first_at[2] = d;
          const double excess = std::isnan(err) ? INFINITY : err - double(bound[at]);
          if (excess > worst_excess) worst_excess = excess, worst_at = static_cast<int64_t>(at);
          ++by_slice[(i % 128) / 16];
          ++by_half[(i % 16) / 8];
          ++by_panel[std::min<int64_t>(d / 64, 3)];
          ++by_pair[d % 8];
          if (first_block < 0) first_block = i / 128;
          last_block = std::max(last_block, i / 128);
        }
      }
    }
  if (bad == 0) return "no element over its bound";
  auto list = [](const int64_t* v, int n) {
    std::string out = "[";
    for (int k = 0; k < n; ++k) out += str(k ? " " : "", v[k]);
    return out + "]";
  };
  const std::size_t w = static_cast<std::size_t>(worst_at);
  return str(bad, " of ", checked, " checked elements over the bound; worst: got ", got[w],
             ", want ", want[w], ", bound ", bound[w], " at flat index ", worst_at,
             "; first at (row ", first_at[0],
             ", head ", first_at[1], ", dim ", first_at[2], "); query blocks ", first_block, "..",
             last_block, "; by 16-row slice of the 128-row block (WG0 warps 0-3, WG1 warps 0-3) ",
             list(by_slice, 8), "; by row half (g, g+8) ", list(by_half, 2),
             "; by 64-dim panel ", list(by_panel, 4), "; by dim % 8 ", list(by_pair, 8));
}

struct Inputs {
  Tensor q, k, v;  // bf16, host
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  Tensor qf = c.q_std > 0.0f ? random_f32({c.t, c.heads, c.dk}, seed + 1, c.q_std)
                             : Tensor::empty(DType::kF32, {c.t, c.heads, c.dk});
  if (c.q_std <= 0.0f) std::fill(qf.mutable_data<float>(), qf.mutable_data<float>() + qf.numel(), 0.0f);
  in.q = convert(qf, DType::kBF16);
  in.k = convert(random_f32({c.s, c.kv, c.dk}, seed + 2), DType::kBF16);
  in.v = convert(random_f32({c.s, c.kv, c.dv}, seed + 3), DType::kBF16);
  return in;
}

// Runs flash_attention_bf16 on device copies of `in` into a poisoned [t + 1, heads, dv] buffer and
// returns the first t rows; the extra row must keep its poison (no store past row t).
std::vector<float> run_flash(const Case& c, const Inputs& in, float scale, bool* tail_intact) {
  const Tensor q_gpu = gpu(in.q), k_gpu = gpu(in.k), v_gpu = gpu(in.v);
  Tensor out = poisoned_gpu({c.t + 1, c.heads, c.dv}, DType::kBF16);  // 0x7f7f: 3.4e38
  const FlashAttentionArgs args{q_gpu.data(), k_gpu.data(), v_gpu.data(), out.mutable_data(),
                                c.t, c.s, c.heads, c.kv, c.dk, c.dv, scale};
  flash_attention_bf16(args, nullptr);  // default stream: the download below waits for it
  const Tensor host = out.to(Device::kCPU);
  const auto* bytes = static_cast<const unsigned char*>(host.data());
  const std::size_t row_bytes = static_cast<std::size_t>(c.heads * c.dv) * 2;
  *tail_intact = true;
  for (std::size_t b = 0; b < row_bytes; ++b)
    if (bytes[static_cast<std::size_t>(c.t) * row_bytes + b] != 0x7f) *tail_intact = false;
  std::vector<float> all = values(host);
  all.resize(static_cast<std::size_t>(c.t * c.heads * c.dv));
  return all;
}

std::string describe(const Case& c) {
  return str("T=", c.t, " S=", c.s, " H=", c.heads, " KV=", c.kv, " dk=", c.dk, " dv=", c.dv,
             " q_std=", c.q_std);
}

// The kernel chosen by REFINERY_ATTN_KERNEL=`kernel` vs the double reference on the heads listed
// (all when empty).
void check_against_reference(const Case& c, uint64_t seed, const char* kernel,
                             const std::vector<int64_t>& heads = {}) {
  SCOPED_TRACE(describe(c) + " kernel=" + kernel);
  const Inputs in = make_inputs(c, seed);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
  Tensor want;
  std::vector<float> bound;
  reference(c, values(in.q), values(in.k), values(in.v), scale, want, bound, heads);
  bool tail_intact = false;
  std::vector<float> got;
  {
    const ScopedEnv env("REFINERY_ATTN_KERNEL", kernel);
    got = run_flash(c, in, scale, &tail_intact);
  }
  const std::vector<float> w = values(want);
  EXPECT_TRUE(tail_intact) << "the kernel wrote past row t";
  const std::string pattern = error_pattern(c, got, w, bound, heads);
  EXPECT_EQ(pattern, "no element over its bound");
}

bool skip_without_wgmma() {
  return cuda::list_devices().empty() || !flash_attention_wgmma_available();
}

TEST(FlashAttentionWgmmaGpu, AvailableExactlyOnComputeNine) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const cuda::DeviceInfo d = cuda::list_devices().at(0);  // the tests run on device 0
  EXPECT_EQ(flash_attention_wgmma_available(),
            d.compute_capability_major == 9 && d.compute_capability_minor == 0);
}

TEST(FlashAttentionWgmmaGpu, SupportsTheBenchmarkWidths) {
  if (!cuda::built_with_cuda()) GTEST_SKIP() << cuda::no_device_reason();
  auto args = [](int64_t dk, int64_t dv) {
    return FlashAttentionArgs{nullptr, nullptr, nullptr, nullptr, 1, 1, 1, 1, dk, dv, 1.0f};
  };
  EXPECT_TRUE(flash_attention_wgmma_supports(args(192, 128)));  // MLA
  EXPECT_TRUE(flash_attention_wgmma_supports(args(128, 128)));
  EXPECT_TRUE(flash_attention_wgmma_supports(args(64, 64)));
  EXPECT_FALSE(flash_attention_wgmma_supports(args(96, 96)));  // not whole 64-column panels
  EXPECT_FALSE(flash_attention_wgmma_supports(args(256, 256)));
  EXPECT_FALSE(flash_attention_wgmma_supports(args(128, 192)));
}

TEST(FlashAttentionWgmmaGpu, KernelSwitchRejectsUnknownNamesAndUnsupportedForcing) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const FlashAttentionArgs args{nullptr, nullptr, nullptr, nullptr, 4, 4, 2, 2, 96, 96, 0.1f};
  {
    const ScopedEnv env("REFINERY_ATTN_KERNEL", "tensorcore");
    try {
      flash_attention_bf16(args, nullptr);
      ADD_FAILURE() << "an unknown REFINERY_ATTN_KERNEL value was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUser);
      EXPECT_NE(std::string(e.what()).find("REFINERY_ATTN_KERNEL"), std::string::npos) << e.what();
    }
  }
  {
    // dk = dv = 96: the mma.sync kernel has it, the Hopper kernel doesn't (nor any device but
    // compute 9.0): forcing it is a user error, raised before anything touches the device.
    const ScopedEnv env("REFINERY_ATTN_KERNEL", "wgmma");
    try {
      flash_attention_bf16(args, nullptr);
      ADD_FAILURE() << "REFINERY_ATTN_KERNEL=wgmma ran on unsupported widths";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUser);
    }
  }
}

TEST(FlashAttentionWgmmaGpu, MatchesDoubleReferenceOnAwkwardShapes) {
  if (skip_without_wgmma()) GTEST_SKIP() << "needs a compute 9.0 GPU (H100/H200)";
  const Case cases[] = {
      {1, 1, 4, 2, 128, 128, 1.0f},       // the first token: one block, WG1 all padding
      {17, 17, 8, 2, 64, 64, 1.0f},       // dk = dv = 64 (one panel, m64n64 P·V)
      {64, 64, 2, 2, 64, 64, 2.0f},       // exactly WG0's rows
      {128, 128, 2, 1, 192, 128, 1.0f},   // exactly one block and one key tile
      {130, 130, 4, 1, 128, 128, 4.0f},   // MQA, second block has 2 rows, two key tiles
      {515, 515, 16, 16, 192, 128, 1.0f}, // MLA, 5 blocks (last: 3 rows), 5 key tiles
      {300, 370, 32, 8, 128, 128, 1.0f},  // GQA 32/8, cached prefix of 70 (not tile aligned)
      {200, 328, 8, 2, 128, 128, 8.0f},   // prefix 128 (tile aligned), peaky softmax
      {77, 1000, 4, 4, 192, 128, 1.0f},   // long prefix: 8 key tiles for one partial block
      {1, 777, 6, 3, 64, 64, 1.0f},       // decode against a cache, s not a multiple of 128
      {2085, 2085, 4, 1, 128, 128, 2.0f}, // 2048 + 37: 17 blocks, 17 key tiles
  };
  uint64_t seed = 9500;
  for (const Case& c : cases) check_against_reference(c, seed += 10, "wgmma");
}

// REFINERY_ATTN_KERNEL=mma forces the mma.sync kernel on any device (the switch the lead keeps
// after the default flips).
TEST(FlashAttentionWgmmaGpu, ForcedMmaKernelMatchesDoubleReference) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  check_against_reference({130, 200, 4, 1, 128, 128, 2.0f}, 9600, "mma");
  check_against_reference({70, 70, 4, 4, 192, 128, 1.0f}, 9610, "mma");
}

// q = 0 makes every visible score equal: the output is the plain mean of the visible value rows.
// This exercises P·V (the V descriptor, the P register fragments: all equal, so a permutation
// within a row can't show) and the mask independently of Q·Kᵀ; if only the general test fails,
// look at the Q/K descriptors and the S accumulator layout first.
TEST(FlashAttentionWgmmaGpu, UniformScoresAverageTheVisibleValues) {
  if (skip_without_wgmma()) GTEST_SKIP() << "needs a compute 9.0 GPU (H100/H200)";
  const Case cases[] = {
      {300, 300, 4, 2, 128, 128, 0.0f},
      {257, 400, 2, 1, 192, 128, 0.0f},
      {150, 150, 2, 2, 64, 64, 0.0f},
  };
  uint64_t seed = 9700;
  for (const Case& c : cases) check_against_reference(c, seed += 10, "wgmma");
}

// The benchmark shapes at L = 2048 against the double reference on a few heads (the whole output
// would take minutes on the host): the first and last head and, for GQA, the first heads of the
// second kv group.
TEST(FlashAttentionWgmmaGpu, MatchesDoubleReferenceOnTheBenchmarkShapes) {
  if (skip_without_wgmma()) GTEST_SKIP() << "needs a compute 9.0 GPU (H100/H200)";
  check_against_reference({2048, 2048, 16, 16, 192, 128, 1.0f}, 9800, "wgmma", {0, 15});
  check_against_reference({2048, 2048, 32, 8, 128, 128, 1.0f}, 9810, "wgmma", {0, 3, 4, 31});
}

// Every head of the benchmark shapes against the mma.sync kernel (validated above). Each kernel
// is within 2^-7 (|ref| + Σ p|v|) of the exact result, so they differ by at most about
// 2^-6 (|mma| + Σ p|v|); Σ_j p_j |v_jd| is computed by the mma kernel itself from |v|.
TEST(FlashAttentionWgmmaGpu, AgreesWithTheMmaKernelOnEveryHead) {
  if (skip_without_wgmma()) GTEST_SKIP() << "needs a compute 9.0 GPU (H100/H200)";
  const Case cases[] = {{2048, 2048, 16, 16, 192, 128, 1.0f}, {2048, 2048, 32, 8, 128, 128, 1.0f}};
  uint64_t seed = 9900;
  for (const Case& c : cases) {
    SCOPED_TRACE(describe(c));
    const Inputs in = make_inputs(c, seed += 10);
    Inputs abs_v = in;
    {
      std::vector<float> v = values(in.v);
      Tensor vf = Tensor::empty(DType::kF32, in.v.shape());
      for (std::size_t i = 0; i < v.size(); ++i) vf.mutable_data<float>()[i] = std::abs(v[i]);
      abs_v.v = convert(vf, DType::kBF16);  // exact: |x| of a bf16 is a bf16
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
    bool tail_mma = false, tail_wgmma = false, tail_abs = false;
    std::vector<float> mma, wgmma, weight;
    {
      const ScopedEnv env("REFINERY_ATTN_KERNEL", "mma");
      mma = run_flash(c, in, scale, &tail_mma);
      weight = run_flash(c, abs_v, scale, &tail_abs);
    }
    {
      const ScopedEnv env("REFINERY_ATTN_KERNEL", "wgmma");
      wgmma = run_flash(c, in, scale, &tail_wgmma);
    }
    EXPECT_TRUE(tail_wgmma) << "the wgmma kernel wrote past row t";
    std::vector<float> bound(mma.size());
    for (std::size_t i = 0; i < mma.size(); ++i)
      bound[i] = std::ldexp(std::abs(mma[i]) + weight[i], -6) + 1e-6f;
    EXPECT_EQ(error_pattern(c, wgmma, mma, bound, {}), "no element over its bound");
  }
}

// No races between the warpgroups, the cp.async stages and the MMAs: repeated runs are bitwise
// identical (a missing barrier or proxy fence shows up as run-to-run differences).
TEST(FlashAttentionWgmmaGpu, IsDeterministic) {
  if (skip_without_wgmma()) GTEST_SKIP() << "needs a compute 9.0 GPU (H100/H200)";
  const Case c{2048, 2048, 16, 16, 192, 128, 2.0f};
  const Inputs in = make_inputs(c, 9950);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.dk));
  const ScopedEnv env("REFINERY_ATTN_KERNEL", "wgmma");
  bool tail = false;
  const std::vector<float> first = run_flash(c, in, scale, &tail);
  for (int run = 0; run < 4; ++run) {
    const std::vector<float> again = run_flash(c, in, scale, &tail);
    ASSERT_EQ(std::memcmp(first.data(), again.data(), first.size() * sizeof(float)), 0)
        << "run " << run + 2 << " differs from run 1";
  }
}

// The direct entry point refuses what the launcher can't run instead of launching garbage.
TEST(FlashAttentionWgmmaGpu, DirectEntryPointChecksItsArguments) {
  if (!cuda::built_with_cuda()) GTEST_SKIP() << cuda::no_device_reason();
  const FlashAttentionArgs widths{nullptr, nullptr, nullptr, nullptr, 4, 4, 2, 2, 96, 96, 0.1f};
  EXPECT_THROW(flash_attention_wgmma_bf16(widths, nullptr), Error);
  const FlashAttentionArgs sizes{nullptr, nullptr, nullptr, nullptr, 8, 4, 2, 2, 128, 128, 0.1f};
  EXPECT_THROW(flash_attention_wgmma_bf16(sizes, nullptr), Error);  // s < t
}

}  // namespace
}  // namespace refinery
