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
#include "engine/backend/cuda/flash_attention.hpp"

#include <cmath>

#include "cuda_test_util.hpp"
#include "engine/core/error.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::cuda::flash_attention_bf16;
using backend::cuda::flash_attention_supports;
using backend::cuda::FlashAttentionArgs;

struct Case {
  int64_t t, s, heads, kv, dk, dv;
  float q_std;  // larger q makes the softmax peaky and the running max move between key tiles
};

// want: [t, heads, dv] f32 reference; bound: the per-element allowance of the file comment.
void reference(const Case& c, const std::vector<float>& q, const std::vector<float>& k,
               const std::vector<float>& v, float scale, Tensor& want, std::vector<float>& bound) {
  want = Tensor::empty(DType::kF32, {c.t, c.heads, c.dv});
  bound.assign(static_cast<std::size_t>(want.numel()), 0.0f);
  float* w = want.mutable_data<float>();
  const int64_t group = c.heads / c.kv;
  std::vector<double> p(static_cast<std::size_t>(c.s));
  for (int64_t i = 0; i < c.t; ++i) {
    const int64_t visible = c.s - c.t + i + 1;
    for (int64_t h = 0; h < c.heads; ++h) {
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

}  // namespace
}  // namespace refinery
