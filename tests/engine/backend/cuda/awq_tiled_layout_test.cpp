// The tiled device layout of AWQ weights (awq_linear.hpp), on the host: no GPU needed.
// awq_tile_host (the reference the GPU repack is tested against in awq_linear_gpu_test.cpp) puts
// every code, zero and scale where awq_tiled_position / awq_tiled_meta / awq_tiled_scale say; and
// a host emulation of the tiled GEMV's data flow — each lane's 16-byte slice decoded into the A
// fragments of mma.m16n8k16 and x into its B fragments exactly as PTX defines the fragment
// layouts, C = A·B per group, then scaled — gives x · Wᵀ of the AutoAWQ weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

#include "engine/backend/cuda/awq_linear.hpp"

namespace refinery::backend::cuda {
namespace {

// A random AutoAWQ weight: codes[o][k], zeros[g][o], scales[g][o] and the packed tensors.
struct AutoAwq {
  int64_t out, in, group;
  std::vector<int> codes, zeros;  // [out, in], [groups, out]
  std::vector<float> scales;      // [groups, out] (values exact in f16: k / 1024)
  std::vector<uint16_t> scales_f16;
  std::vector<int32_t> qweight, qzeros;  // [in, out / 8], [groups, out / 8]
};

uint16_t f16_bits(float v) {  // v = m / 1024 with 0 < m < 2048: exact, normal f16
  int e = 0;
  const float f = std::frexp(v, &e);  // v = f · 2^e, f in [0.5, 1)
  const auto mant = static_cast<uint16_t>(std::lround((f * 2.0f - 1.0f) * 1024.0f));
  return static_cast<uint16_t>((e - 1 + 15) << 10 | mant);
}

AutoAwq random_autoawq(int bits, int64_t out, int64_t in, int64_t group, uint64_t seed) {
  std::mt19937_64 rng(seed);
  AutoAwq a{out, in, group, {}, {}, {}, {}, {}, {}};
  const int64_t groups = in / group, words = out / 8;
  a.codes.resize(static_cast<std::size_t>(out * in));
  a.zeros.resize(static_cast<std::size_t>(groups * out));
  a.scales.resize(a.zeros.size());
  a.scales_f16.resize(a.zeros.size());
  for (int& c : a.codes) c = static_cast<int>(rng() % (1u << bits));
  for (int& z : a.zeros) z = static_cast<int>(rng() % (1u << bits));
  for (std::size_t i = 0; i < a.scales.size(); ++i) {
    a.scales[i] = static_cast<float>(1 + rng() % 2000) / 1024.0f;
    a.scales_f16[i] = f16_bits(a.scales[i]);
  }
  const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  auto pack = [&](int64_t rows, auto value) {
    std::vector<int32_t> t(static_cast<std::size_t>(rows * words));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t w = 0; w < words; ++w) {
        uint32_t word = 0;
        for (int j = 0; j < 8; ++j) word |= static_cast<uint32_t>(value(r, w * 8 + order[j])) << (4 * j);
        t[r * words + w] = static_cast<int32_t>(word);
      }
    return t;
  };
  a.qweight = pack(in, [&](int64_t k, int64_t o) { return a.codes[o * in + k]; });
  a.qzeros = pack(groups, [&](int64_t g, int64_t o) { return a.zeros[g * out + o]; });
  return a;
}

struct Tiled {
  std::vector<int32_t> qweight;
  std::vector<uint8_t> zeros;
  std::vector<uint16_t> scales;
};

Tiled tile(const AutoAwq& a) {
  Tiled t;
  t.qweight.resize(a.qweight.size());
  t.zeros.resize(static_cast<std::size_t>(a.in / a.group * a.out / 2));
  t.scales.resize(a.scales_f16.size());
  awq_tile_host(a.qweight.data(), a.qzeros.data(), a.scales_f16.data(), a.out, a.in, a.group,
                t.qweight.data(), t.zeros.data(), t.scales.data());
  return t;
}

TEST(AwqTiledLayout, SupportedSizes) {
  EXPECT_TRUE(awq_tiled_supported(4, 128, 14336, 4096));
  EXPECT_TRUE(awq_tiled_supported(3, 64, 16, 64));
  EXPECT_TRUE(awq_tiled_supported(4, 256, 32, 512));
  EXPECT_FALSE(awq_tiled_supported(8, 128, 4096, 4096));   // 8-bit container
  EXPECT_FALSE(awq_tiled_supported(4, 32, 4096, 4096));    // a chunk would span two groups
  EXPECT_FALSE(awq_tiled_supported(4, 192, 4096, 3840));   // 3 chunks per group
  EXPECT_FALSE(awq_tiled_supported(4, 128, 4104, 4096));   // out not a multiple of 16
  EXPECT_FALSE(awq_tiled_supported(4, 128, 4096, 4160));   // group does not divide in
}

TEST(AwqTiledLayout, NibbleMapIsABijection) {
  std::set<int> seen;
  for (int n = 0; n < 8; ++n) {
    EXPECT_EQ(awq_tiled_nibble(awq_tiled_input_of(n), awq_tiled_half_of(n)), n);
    seen.insert(n);
  }
  EXPECT_EQ(seen.size(), 8u);
  // A register i of a word is nibbles (i, i + 4): inputs (0, 1) or (2, 3) of one row half.
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(awq_tiled_half_of(i), awq_tiled_half_of(i + 4));
    EXPECT_EQ(awq_tiled_input_of(i) + 1, awq_tiled_input_of(i + 4));
  }
}

TEST(AwqTiledLayout, HostRepackPutsEveryElementWhereThePositionSays) {
  for (const auto& [bits, out, in, group] :
       {std::tuple<int, int64_t, int64_t, int64_t>{4, 48, 256, 64}, {4, 32, 512, 128},
        {3, 16, 256, 256}, {4, 64, 128, 128}}) {
    const AutoAwq a = random_autoawq(bits, out, in, group, 11 + out + in);
    const Tiled t = tile(a);
    const int64_t groups = in / group;
    std::set<std::pair<int64_t, int>> positions;
    for (int64_t o = 0; o < out; ++o)
      for (int64_t k = 0; k < in; ++k) {
        const AwqTiledPosition p = awq_tiled_position(o, k, in);
        ASSERT_GE(p.word, 0);
        ASSERT_LT(p.word, static_cast<int64_t>(t.qweight.size()));
        positions.insert({p.word, p.nibble});
        const int code = static_cast<int>((static_cast<uint32_t>(t.qweight[p.word]) >> (4 * p.nibble)) & 15u);
        ASSERT_EQ(code, a.codes[o * in + k]) << "o " << o << " k " << k;
      }
    EXPECT_EQ(positions.size(), static_cast<std::size_t>(out * in));  // no two elements share one
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t o = 0; o < out; ++o) {
        const int zero = (t.zeros[awq_tiled_meta(o, g, groups)] >> (4 * ((o % 16) / 8))) & 15;
        EXPECT_EQ(zero, a.zeros[g * out + o]);
        EXPECT_EQ(t.scales[awq_tiled_scale(o, g, groups)], a.scales_f16[g * out + o]);
      }
  }
}

// The tiled GEMV's data flow for one 16-output tile over all of K, following the PTX fragment
// layouts of mma.m16n8k16 (bf16, row.col; g = lane / 4, q = lane % 4):
//   A (16 x 16): a0,a1 = (g, 2q..2q+1), a2,a3 = (g + 8, 2q..), a4,a5 = (g, 2q + 8..), a6,a7 = (g + 8, 2q + 8..)
//   B (16 x 8):  b0,b1 = (2q..2q+1, g),  b2,b3 = (2q + 8..2q + 9, g)
//   C (16 x 8):  c0,c1 = (g, 2q..2q+1),  c2,c3 = (g + 8, 2q..2q+1)
// with the kernel's choices: A register i = nibbles (i, i + 4) of word s of the lane's slice minus
// the zero of its row half; B = x[token g, 64c + 16q + 4s .. +4) as two pairs.
std::vector<double> emulate_tiled_gemv(const AutoAwq& a, const Tiled& t,
                                       const std::vector<float>& x, int rows) {
  const int64_t chunks = a.in / 64, groups = a.in / a.group, cpg = a.group / 64;
  std::vector<double> y(static_cast<std::size_t>(rows * a.out), 0.0);
  for (int64_t tile = 0; tile < a.out / 16; ++tile) {
    double acc[16][8] = {};
    double c[16][8] = {};
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t group = chunk / cpg;
      for (int s = 0; s < 4; ++s) {
        double A[16][16] = {}, B[16][8] = {};
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, q = lane % 4;
          const uint32_t word =
              static_cast<uint32_t>(t.qweight[((tile * chunks + chunk) * 32 + lane) * 4 + s]);
          const uint8_t zb = t.zeros[(tile * groups + group) * 8 + g];
          const int zero[2] = {zb & 15, zb >> 4};
          double reg[4][2];
          for (int i = 0; i < 4; ++i) {
            const int half = i % 2;  // registers 1 and 3 hold row g + 8
            reg[i][0] = static_cast<double>((word >> (4 * i)) & 15u) - zero[half];
            reg[i][1] = static_cast<double>((word >> (4 * (i + 4))) & 15u) - zero[half];
          }
          for (int e = 0; e < 2; ++e) {
            A[g][2 * q + e] = reg[0][e];
            A[g + 8][2 * q + e] = reg[1][e];
            A[g][2 * q + 8 + e] = reg[2][e];
            A[g + 8][2 * q + 8 + e] = reg[3][e];
          }
          const int64_t k = chunk * 64 + 16 * q + 4 * s;
          for (int e = 0; e < 2; ++e) {
            B[2 * q + e][g] = g < rows ? x[g * a.in + k + e] : 0.0;
            B[2 * q + 8 + e][g] = g < rows ? x[g * a.in + k + 2 + e] : 0.0;
          }
        }
        for (int m = 0; m < 16; ++m)
          for (int n = 0; n < 8; ++n)
            for (int kc = 0; kc < 16; ++kc) c[m][n] += A[m][kc] * B[kc][n];
      }
      if ((chunk + 1) % cpg == 0) {  // scale the group in: scale pair (row g, row g + 8)
        for (int m = 0; m < 16; ++m) {
          const uint16_t bits = t.scales[((tile * groups + group) * 8 + m % 8) * 2 + m / 8];
          const double scale = std::ldexp(1.0 + (bits & 1023) / 1024.0, ((bits >> 10) & 31) - 15);
          for (int n = 0; n < 8; ++n) {
            acc[m][n] += scale * c[m][n];
            c[m][n] = 0.0;
          }
        }
      }
    }
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < rows; ++n) y[n * a.out + tile * 16 + m] = acc[m][n];
  }
  return y;
}

TEST(AwqTiledLayout, EmulatedTensorCoreGemvMatchesTheAutoAwqWeights) {
  for (const auto& [bits, out, in, group, rows] :
       {std::tuple<int, int64_t, int64_t, int64_t, int>{4, 32, 256, 128, 1}, {4, 48, 384, 64, 3},
        {3, 16, 512, 256, 8}, {4, 16, 128, 128, 5}}) {
    const AutoAwq a = random_autoawq(bits, out, in, group, 77 + in + rows);
    const Tiled t = tile(a);
    std::mt19937_64 rng(5 + out);
    std::vector<float> x(static_cast<std::size_t>(rows * in));
    for (float& v : x) v = static_cast<float>(static_cast<int>(rng() % 61) - 30) / 16.0f;
    const std::vector<double> got = emulate_tiled_gemv(a, t, x, rows);
    for (int n = 0; n < rows; ++n)
      for (int64_t o = 0; o < out; ++o) {
        double want = 0.0;
        for (int64_t k = 0; k < in; ++k) {
          const int64_t g = k / group;
          want += static_cast<double>(a.codes[o * in + k] - a.zeros[g * out + o]) *
                  a.scales[g * out + o] * x[n * in + k];
        }
        ASSERT_NEAR(got[n * out + o], want, 1e-9 * (1.0 + std::abs(want)))
            << "bits " << bits << " out " << out << " in " << in << " token " << n << " o " << o;
      }
  }
}

}  // namespace
}  // namespace refinery::backend::cuda
