// CUDA linear and moe_experts on AutoAWQ (GEMM layout) weights. The weights are built here from
// random codes, zeros and f16 scales by a packer written straight from the format's definition
// (linear_weight.hpp): 4/3 bits, nibble j of an int32 holds output column base + order[j],
// order = [0,2,4,6,1,3,5,7]; 8 bits, byte j holds column base + j. The reference is
// W[r, c] = (code - zero) · scale computed on the host and an f64 matmul with x rounded to bf16
// (what the kernels read).
// Error bounds per element, with A[t, r] = Σ_c |x[t, c]| |W[r, c]|:
//   GEMV (rows <= 8): W is exact in f32 (code - zero exact, exact products) and every term goes
//     through at most 32 (rows of a task) + k (tasks of a warp) + S·W <= 128 (the warps of a
//     column tile, summed in order) + 2 (scale, bf16 x exact) f32 roundings; k + S·W stays below
//     ~160 for every shape here (in <= 14336, 448 tasks): depth <= ~200, |Δ| <= 2e-5 · A; the
//     tiled kernel (tensor cores: a group's products summed in f32, then scaled, then groups and
//     <= 16 warps added in order) is shallower: <= 8·16 + 224 + 16 for in <= 14336;
//   dequantize + GEMM (rows > 8): W rounded to bf16 (<= 2^-9 relative) then an f32-accumulated
//     GEMM: |Δ| <= 2^-8 · A;
//   a bf16 output adds its rounding, <= 2^-8 · |y| (half an ulp is 2^-9);
//   everywhere an absolute 1e-6 · max|y|.
// MoE: AWQ experts against dense bf16 experts holding the same dequantized values rounded to bf16:
// with more than 8 rows per expert both run the same stacked GEMMs on bitwise equal weights
// (differences only from rounding order: <= 2^-7 · max|y|); decode-sized calls run the AWQ GEMV on
// exact weights against bf16 GEMMs (<= 2e-2 · max|y|, the bf16 tolerance of moe_gpu_test).
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <variant>

#include "cuda_test_util.hpp"
#include "engine/backend/cuda/awq_linear.hpp"
#include "engine/core/device_memory.hpp"
#include "engine/core/error.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::AwqWeight;
using backend::LinearWeight;

// An AwqWeight on the host and its dequantized matrix [out, in] (exact, in f32).
struct HostAwq {
  AwqWeight w;
  std::vector<float> dense;
};

HostAwq random_awq(int bits, int group, int64_t out, int64_t in, uint64_t seed) {
  const int pack = bits == 8 ? 4 : 8, width = bits == 8 ? 8 : 4;
  const int order4[8] = {0, 2, 4, 6, 1, 3, 5, 7}, order8[4] = {0, 1, 2, 3};
  const int* order = bits == 8 ? order8 : order4;
  const int64_t words = out / pack, groups = in / group;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> code_of(0, (1 << bits) - 1);
  std::vector<int> codes(static_cast<std::size_t>(out * in)), zeros(groups * out);
  for (int& c : codes) c = code_of(rng);
  for (int& z : zeros) z = code_of(rng);
  // Scales in f16, positive, varied magnitude; the exact f16 values are read back.
  Tensor scales32 = Tensor::empty(DType::kF32, {groups, out});
  std::uniform_real_distribution<float> mag(0.002f, 0.02f);
  for (int64_t i = 0; i < groups * out; ++i) scales32.mutable_data<float>()[i] = mag(rng);
  HostAwq h;
  h.w.bits = bits;
  h.w.group_size = group;
  h.w.out = out;
  h.w.in = in;
  h.w.scales = convert(scales32, DType::kF16);
  const std::vector<float> scale = values(h.w.scales);
  // pack(values of row-major [rows, out]) -> int32 [rows, words]
  auto pack_rows = [&](const std::function<int(int64_t, int64_t)>& value, int64_t rows) {
    Tensor t = Tensor::empty(DType::kI32, {rows, words});
    for (int64_t c = 0; c < rows; ++c)
      for (int64_t k = 0; k < words; ++k) {
        uint32_t word = 0;
        for (int j = 0; j < pack; ++j)
          word |= static_cast<uint32_t>(value(c, k * pack + order[j])) << (width * j);
        t.mutable_data<int32_t>()[c * words + k] = static_cast<int32_t>(word);
      }
    return t;
  };
  h.w.qweight = pack_rows([&](int64_t c, int64_t r) { return codes[r * in + c]; }, in);
  h.w.qzeros = pack_rows([&](int64_t g, int64_t r) { return zeros[g * out + r]; }, groups);
  h.dense.resize(static_cast<std::size_t>(out * in));
  for (int64_t r = 0; r < out; ++r)
    for (int64_t c = 0; c < in; ++c) {
      const int64_t g = c / group;
      h.dense[r * in + c] =
          static_cast<float>(codes[r * in + c] - zeros[g * out + r]) * scale[g * out + r];
    }
  return h;
}

LinearWeight linear_of(const HostAwq& h, const std::string& name) {
  LinearWeight w;
  w.storage = h.w;
  w.name = name;
  return w;
}

// The same weight as read-only host tensors (like a memory-mapped checkpoint): the backend keeps
// one device copy (tiled in place on the first call) instead of uploading it per call.
LinearWeight mapped_linear_of(const HostAwq& h, const std::string& name) {
  auto keep = std::make_shared<AwqWeight>(h.w);
  AwqWeight mapped = h.w;
  mapped.qweight =
      Tensor::from_external(DType::kI32, h.w.qweight.shape(), keep->qweight.data(), keep);
  mapped.qzeros = Tensor::from_external(DType::kI32, h.w.qzeros.shape(), keep->qzeros.data(), keep);
  mapped.scales = Tensor::from_external(DType::kF16, h.w.scales.shape(), keep->scales.data(), keep);
  LinearWeight w;
  w.storage = mapped;
  w.name = name;
  return w;
}

// The device tensors of an AWQ weight (AutoAWQ layout, uploaded as they are) and the raw
// launchers' view of them.
struct DeviceAwq {
  Tensor qweight, qzeros, scales;
  backend::cuda::AwqDeviceMatrix m;
};
DeviceAwq device_awq(const HostAwq& h) {
  DeviceAwq d{gpu(h.w.qweight), gpu(h.w.qzeros), gpu(h.w.scales), {}};
  d.m.qweight = d.qweight.data<int32_t>();
  d.m.qzeros = d.qzeros.data<int32_t>();
  d.m.scales = d.scales.data();
  d.m.bits = h.w.bits;
  d.m.group_size = static_cast<int>(h.w.group_size);
  d.m.out = h.w.out;
  d.m.in = h.w.in;
  d.m.words = h.w.out / (h.w.bits == 8 ? 4 : 8);
  return d;
}

// want[t, r] = Σ_c x[t, c] W[r, c] (+ bias) in f64 and bound[t, r] = rel · Σ |x||W|
// (+ out_rel · |want|); x is already bf16-exact.
void reference(const std::vector<float>& x, const HostAwq& h, const std::vector<float>& bias,
               int64_t t_count, double rel, double out_rel, Tensor& want,
               std::vector<float>& bound) {
  const int64_t out = h.w.out, in = h.w.in;
  want = Tensor::empty(DType::kF32, {t_count, out});
  bound.assign(static_cast<std::size_t>(t_count * out), 0.0f);
  for (int64_t t = 0; t < t_count; ++t)
    for (int64_t r = 0; r < out; ++r) {
      double sum = 0.0, abs_sum = 0.0;
      for (int64_t c = 0; c < in; ++c) {
        const double p = double(x[t * in + c]) * double(h.dense[r * in + c]);
        sum += p;
        abs_sum += std::abs(p);
      }
      if (!bias.empty()) sum += bias[r];
      want.mutable_data<float>()[t * out + r] = static_cast<float>(sum);
      bound[t * out + r] = static_cast<float>(rel * abs_sum + out_rel * std::abs(sum));
    }
}

// Runs be.linear on x [t, in] (bf16-exact values, given to the op as `x_dtype`) into a poisoned y
// of `y_dtype` and compares with the reference under the bounds at the top of this file.
void check_awq_linear(Backend& be, const HostAwq& h, const LinearWeight& w, int64_t t,
                      DType x_dtype, DType y_dtype, uint64_t seed) {
  const Tensor x16 = convert(random_f32({t, h.w.in}, seed), DType::kBF16);
  const std::vector<float> x = values(x16);
  std::vector<float> bias;
  if (w.bias.defined()) bias = values(w.bias);
  const double rel = t <= 8 ? 2e-5 : std::ldexp(1.0, -8);
  const double out_rel = y_dtype == DType::kBF16 ? std::ldexp(1.0, -8) : 0.0;
  Tensor want;
  std::vector<float> bound;
  reference(x, h, bias, t, rel, out_rel, want, bound);
  Tensor got = poisoned_gpu({t, h.w.out}, y_dtype);
  be.linear(gpu(x_dtype == DType::kBF16 ? x16 : x16.to_f32()), w, got);
  EXPECT_TRUE(close(str("awq linear ", w.describe(), w.bias.defined() ? " +bias" : "", " T=", t,
                        " x ", dtype_name(x_dtype), " y ", dtype_name(y_dtype)),
                    got, want, 1e-6 * max_abs(want), bound));
}

struct Shape {
  int bits, group;
  int64_t out, in;
};

TEST(AwqLinearGpu, MatchesHostDequantizedReference) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  // out = 8k not a multiple of 64 (8-bit: 4k not a multiple of 8), several groups, group sizes
  // 32/64/128 and two that are not multiples of 8 (element-wise dequantize path), a long K with
  // many split-K partial sums, and single-group matrices (one split, direct write).
  const Shape shapes[] = {{4, 32, 200, 96},   {4, 64, 72, 192}, {3, 128, 328, 384},
                          {8, 64, 204, 128},  {8, 32, 8, 32},   {4, 128, 1032, 4096},
                          {3, 32, 40, 32},    {4, 20, 40, 60},  {8, 12, 20, 36},
                          {4, 128, 136, 1024},
                          // tiled layout (out % 16 == 0, group 64·2^i): GEMV and tiled dequantize
                          {4, 128, 256, 1024}, {3, 64, 48, 192},  {4, 256, 32, 512}};
  uint64_t seed = 7000;
  for (const Shape& s : shapes) {
    const HostAwq h = random_awq(s.bits, s.group, s.out, s.in, ++seed);
    const LinearWeight w = linear_of(h, "test.awq");
    for (int64_t t : {1, 3, 8, 9, 37})
      for (DType y_dtype : {DType::kF32, DType::kBF16})
        check_awq_linear(*be, h, w, t, t % 2 == 0 ? DType::kF32 : DType::kBF16, y_dtype, ++seed);
  }
}

// The GEMV alone (1..8 token rows) on the shapes its plan treats differently: ragged last column
// tile (words not a multiple of 32), clusters of several blocks (long K, few tiles), several tasks
// per warp (in = 14336), groups that are multiples of 32 (32-row tasks) or not (24, 20, 12 and 1
// rows per task: group 48, 20, 12, 37), bits 3, 4 and 8. Then the same call twice: bitwise equal.
TEST(AwqLinearGpu, GemvAllRowCountsAndPlans) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const Shape shapes[] = {{4, 128, 264, 4096}, {4, 64, 512, 2048}, {3, 32, 96, 1024},
                          {8, 128, 132, 4096}, {8, 64, 256, 512},  {4, 48, 136, 480},
                          {4, 20, 40, 60},     {8, 12, 20, 36},    {4, 37, 16, 74},
                          {4, 128, 200, 14336}};
  uint64_t seed = 9000;
  for (const Shape& s : shapes) {
    const HostAwq h = random_awq(s.bits, s.group, s.out, s.in, ++seed);
    const LinearWeight w = linear_of(h, "test.awq_gemv");
    for (int64_t t = 1; t <= 8; ++t)
      check_awq_linear(*be, h, w, t, t % 2 == 0 ? DType::kF32 : DType::kBF16,
                       t % 3 == 0 ? DType::kBF16 : DType::kF32, ++seed);
  }
  const HostAwq h = random_awq(4, 128, 264, 4096, 9100);
  const LinearWeight w = linear_of(h, "test.awq_gemv_twice");
  const Tensor x = gpu(convert(random_f32({3, 4096}, 9101), DType::kBF16));
  Tensor a = poisoned_gpu({3, 264}, DType::kF32), b = poisoned_gpu({3, 264}, DType::kF32);
  be->linear(x, w, a);
  be->linear(x, w, b);
  const std::vector<float> va = values(a), vb = values(b);
  ASSERT_EQ(va.size(), vb.size());
  EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)), 0);
}

// Every GEMV variant (awq_gemv.cu) through awq_gemv_bf16_variant against the host reference, rows
// 1..8, on AutoAWQ-layout matrices (the tiled variant runs the AutoAWQ default for them; tiled
// matrices: TiledRepackGemvAndDequantize): words a multiple of 4 (128-bit loads at 1 row), of 2
// only, odd (32-bit loads), a ragged last tile, groups 32/64/128 (32-row tasks) and 48 (16-row
// tasks), 3 bits, in = 14336 (many tasks per warp); and where v4r32c16 falls back to base (8 bits,
// group 20). The GEMV bounds at the top of this file apply (the v2 reduction is at most as deep
// as base's). Each variant is run twice on one input: bitwise equal.
TEST(AwqLinearGpu, GemvEveryVariant) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  namespace bc = backend::cuda;
  auto be = backend::make_cuda_backend(0);
  const Shape shapes[] = {{4, 128, 1024, 4096}, {4, 32, 2048, 256},  {3, 64, 320, 1536},
                          {4, 64, 272, 2048},   {4, 128, 264, 4096}, {4, 48, 136, 480},
                          {4, 128, 200, 14336}, {8, 64, 256, 512},   {4, 20, 40, 60}};
  const int variants = bc::awq_gemv_variant_count();
  ASSERT_GT(variants, 1);
  uint64_t seed = 9500;
  for (const Shape& s : shapes) {
    const HostAwq h = random_awq(s.bits, s.group, s.out, s.in, ++seed);
    const DeviceAwq d = device_awq(h);
    const bc::AwqDeviceMatrix& m = d.m;
    if (!bc::awq_gemv_supports(m, 1)) {
      GTEST_SKIP() << "no thread-block clusters: no GEMV";
    }
    const bool own = s.bits != 8 && s.group % 16 == 0;  // the v2 kernels cover this matrix
    for (int64_t t = 1; t <= 8; ++t) {
      const Tensor x16 = convert(random_f32({t, s.in}, ++seed), DType::kBF16);
      const Tensor xg = gpu(x16);
      const std::vector<float> x = values(x16);
      const DType y_dtype = t % 3 == 0 ? DType::kBF16 : DType::kF32;
      Tensor want;
      std::vector<float> bound;
      reference(x, h, {}, t, 2e-5, y_dtype == DType::kBF16 ? std::ldexp(1.0, -8) : 0.0, want,
                bound);
      for (int v = 0; v < variants; ++v) {
        const std::string runs = bc::awq_gemv_variant_runs(m, t, v);
        const std::string what = str("awq gemv variant ", bc::awq_gemv_variant_name(v), " (",
                                     runs, ") bits ", s.bits, " group ", s.group, " out ", s.out,
                                     " in ", s.in, " T=", t);
        if (v > 0) {
          EXPECT_EQ(runs.rfind("v2 ", 0) == 0, own) << what;
        }
        Tensor got = poisoned_gpu({t, s.out}, y_dtype);
        bc::awq_gemv_bf16_variant(m, xg.data(), t, got.mutable_data(), y_dtype == DType::kF32, v,
                                  nullptr);
        EXPECT_TRUE(close(what, got, want, 1e-6 * max_abs(want), bound));
        if (t == 3 && y_dtype == DType::kBF16) {
          Tensor again = poisoned_gpu({t, s.out}, y_dtype);
          bc::awq_gemv_bf16_variant(m, xg.data(), t, again.mutable_data(), false, v, nullptr);
          const std::vector<float> a = values(got), b = values(again);
          ASSERT_EQ(a.size(), b.size());
          EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what;
        }
      }
    }
  }
  // 128-bit loads run at 1 row where words % 4 == 0 (the first shape: 128 words).
  const HostAwq h = random_awq(4, 128, 1024, 4096, 9600);
  const DeviceAwq d = device_awq(h);
  const bc::AwqDeviceMatrix& m = d.m;
  for (int v = 1; v < variants; ++v)
    if (bc::awq_gemv_variant_name(v).rfind("v4", 0) == 0) {
      EXPECT_NE(bc::awq_gemv_variant_runs(m, 1, v).find(" vec4 "), std::string::npos)
          << bc::awq_gemv_variant_runs(m, 1, v);
    }
}

// The tiled layout (awq_linear.hpp): the GPU repack equals the host repack bitwise; the tiled
// GEMV variants match the reference (GEMV bounds at the top of this file: a group's 128 products
// are summed by the tensor cores in f32, then scaled and added in f32 in group order, then at most
// 16 warps' sums in order) and are deterministic; the tiled dequantization equals the AutoAWQ one
// bitwise, on whole and partial (word-aligned, not tile-aligned) row ranges.
TEST(AwqLinearGpu, TiledRepackGemvAndDequantize) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  namespace bc = backend::cuda;
  auto be = backend::make_cuda_backend(0);
  const Shape shapes[] = {{4, 128, 1024, 4096}, {3, 64, 320, 1536}, {4, 256, 32, 512},
                          {4, 128, 208, 14336}, {4, 64, 16, 64},    {4, 128, 4096, 256}};
  uint64_t seed = 9800;
  for (const Shape& s : shapes) {
    ASSERT_TRUE(bc::awq_tiled_supported(s.bits, s.group, s.out, s.in));
    const HostAwq h = random_awq(s.bits, s.group, s.out, s.in, ++seed);
    const DeviceAwq d = device_awq(h);
    const bc::AwqDeviceMatrix& m = d.m;
    Tensor tq = gpu(Tensor::zeros(DType::kI32, h.w.qweight.shape()));
    Tensor tz = gpu(Tensor::zeros(DType::kI32, h.w.qzeros.shape()));
    Tensor ts = gpu(Tensor::zeros(DType::kF16, h.w.scales.shape()));
    bc::awq_repack_tiled(m, tq.mutable_data<int32_t>(), tz.mutable_data(), ts.mutable_data(),
                         nullptr);
    const std::string what = str("bits ", s.bits, " group ", s.group, " out ", s.out, " in ", s.in);
    {  // GPU repack == host repack, bitwise
      Tensor hq = Tensor::empty(DType::kI32, h.w.qweight.shape());
      Tensor hz = Tensor::empty(DType::kI32, h.w.qzeros.shape());
      Tensor hs = Tensor::empty(DType::kF16, h.w.scales.shape());
      bc::awq_tile_host(h.w.qweight.data<int32_t>(), h.w.qzeros.data<int32_t>(),
                        static_cast<const uint16_t*>(h.w.scales.data()), s.out, s.in, s.group,
                        hq.mutable_data<int32_t>(), static_cast<uint8_t*>(hz.mutable_data()),
                        static_cast<uint16_t*>(hs.mutable_data()));
      const Tensor dq = tq.to(Device::kCPU), dz = tz.to(Device::kCPU), ds = ts.to(Device::kCPU);
      EXPECT_EQ(std::memcmp(dq.data(), hq.data(), hq.nbytes()), 0) << "qweight " << what;
      EXPECT_EQ(std::memcmp(dz.data(), hz.data(), hz.nbytes()), 0) << "zeros " << what;
      EXPECT_EQ(std::memcmp(ds.data(), hs.data(), hs.nbytes()), 0) << "scales " << what;
    }
    bc::AwqDeviceMatrix t = m;
    t.qweight = tq.data<int32_t>();
    t.qzeros = tz.data<int32_t>();
    t.scales = ts.data();
    t.layout = bc::AwqLayout::kTiled;
    ASSERT_TRUE(bc::awq_gemv_supports(t, 1)) << what;
    for (int64_t rows = 1; rows <= 8; ++rows) {
      const Tensor x16 = convert(random_f32({rows, s.in}, ++seed), DType::kBF16);
      const std::vector<float> x = values(x16);
      // x at a 2-byte offset as well: the kernel's unaligned x path.
      Tensor xpad = gpu(Tensor::zeros(DType::kBF16, {rows * s.in + 1}));
      copy_device_to_device(static_cast<uint16_t*>(xpad.mutable_data()) + 1, gpu(x16).data(),
                            x16.nbytes());
      const void* x_odd = static_cast<const uint16_t*>(xpad.data()) + 1;
      const Tensor xg = gpu(x16);
      const DType y_dtype = rows % 3 == 0 ? DType::kBF16 : DType::kF32;
      Tensor want;
      std::vector<float> bound;
      reference(x, h, {}, rows, 2e-5, y_dtype == DType::kBF16 ? std::ldexp(1.0, -8) : 0.0, want,
                bound);
      for (int v = 0; v < bc::awq_gemv_variant_count(); ++v) {
        if (!bc::awq_gemv_variant_is_tiled(v)) continue;
        const std::string name = str("tiled gemv ", bc::awq_gemv_variant_name(v), " (",
                                     bc::awq_gemv_variant_runs(t, rows, v), ") ", what, " T=", rows);
        for (const void* xp : {xg.data(), x_odd}) {
          Tensor got = poisoned_gpu({rows, s.out}, y_dtype);
          bc::awq_gemv_bf16_variant(t, xp, rows, got.mutable_data(), y_dtype == DType::kF32, v,
                                    nullptr);
          EXPECT_TRUE(close(name + (xp == x_odd ? " (x unaligned)" : ""), got, want,
                            1e-6 * max_abs(want), bound));
          Tensor again = poisoned_gpu({rows, s.out}, y_dtype);
          bc::awq_gemv_bf16_variant(t, xp, rows, again.mutable_data(), y_dtype == DType::kF32, v,
                                    nullptr);
          const std::vector<float> a = values(got), b = values(again);
          EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << name;
        }
      }
    }
    // Dequantization: whole matrix and words [1, 4) (outputs 8..32: not tile-aligned).
    const std::pair<int64_t, int64_t> ranges[] = {{0, m.words},
                                                  {1, std::min<int64_t>(3, m.words - 1)}};
    for (const auto& [w0, wn] : ranges) {
      if (wn <= 0) continue;
      Tensor a = gpu(Tensor::zeros(DType::kBF16, {wn * 8, s.in}));
      Tensor b = gpu(Tensor::zeros(DType::kBF16, {wn * 8, s.in}));
      bc::awq_dequantize_bf16(m, w0, wn, a.mutable_data(), nullptr);
      bc::awq_dequantize_bf16(t, w0, wn, b.mutable_data(), nullptr);
      const Tensor ha = a.to(Device::kCPU), hb = b.to(Device::kCPU);
      EXPECT_EQ(std::memcmp(ha.data(), hb.data(), ha.nbytes()), 0)
          << "dequantize words [" << w0 << ", +" << wn << ") " << what;
    }
  }
}

TEST(AwqLinearGpu, BiasDeviceAndReadOnlyWeights) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  // out 136: AutoAWQ layout on the device; 144: tiled (awq_device_matrix's three paths).
  for (const int64_t out : {136, 144}) {
    auto be = backend::make_cuda_backend(0);
    const HostAwq h = random_awq(4, 64, out, 256, 7500 + out);
    LinearWeight with_bias = linear_of(h, "test.awq_bias");
    with_bias.bias = convert(random_f32({out}, 7501), DType::kBF16);
    for (int64_t t : {1, 5, 12})
      check_awq_linear(*be, h, with_bias, t, DType::kBF16, DType::kF32, 7502 + t);

    // Tensors already on the device.
    AwqWeight on_gpu = h.w;
    on_gpu.qweight = gpu(h.w.qweight);
    on_gpu.qzeros = gpu(h.w.qzeros);
    on_gpu.scales = gpu(h.w.scales);
    LinearWeight device_w;
    device_w.storage = on_gpu;
    device_w.name = "test.awq_device";
    for (int64_t t : {2, 16})
      check_awq_linear(*be, h, device_w, t, DType::kBF16, DType::kBF16, 7510 + t);

    // Read-only host tensors (memory-mapped checkpoints) are cached on the device: still right on
    // the second and third call.
    const LinearWeight mapped_w = mapped_linear_of(h, "test.awq_mapped");
    ASSERT_TRUE(std::get<AwqWeight>(mapped_w.storage).qweight.is_read_only());
    for (int64_t t : {1, 1, 20})
      check_awq_linear(*be, h, mapped_w, t, DType::kBF16, DType::kF32, 7520 + t);
    // The cached copy of a read-only weight is tiled in place once per backend: a new backend (its
    // own fresh copy, possibly at a freed copy's address) tiles its copy again.
    be.reset();
    for (int round = 0; round < 2; ++round) {
      auto other = backend::make_cuda_backend(0);
      for (int64_t t : {1, 2})
        check_awq_linear(*other, h, mapped_w, t, DType::kBF16, DType::kF32, 7530 + t + round);
    }
  }
}

// Programmatic dependent launch (awq_gemv.cu): a tiled GEMV reads its weights before waiting for
// the kernels before it, x and y only after. A chain y1 = W1·x, y2 = W2·y1 of GEMVs on cached
// (not freshly tiled) weights, repeated with new inputs: every y1 is what the previous GEMV wrote,
// every y2 is W2 times exactly that y1 (no read of a half-written or stale y1, no write of y1
// while the previous round's GEMV still reads it).
TEST(AwqLinearGpu, GemvChainWithDependentLaunchReadsFinishedInputs) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const HostAwq h1 = random_awq(4, 128, 2048, 4096, 7600), h2 = random_awq(4, 128, 4096, 2048, 7601);
  const LinearWeight w1 = mapped_linear_of(h1, "test.chain1"), w2 = mapped_linear_of(h2, "test.chain2");
  Tensor y1 = be->empty(DType::kBF16, {1, 2048}), y2 = be->empty(DType::kF32, {1, 4096});
  be->linear(gpu(convert(random_f32({1, 4096}, 7602), DType::kBF16)), w1, y1);  // tiles W1
  be->linear(y1, w2, y2);                                                         // tiles W2
  for (int round = 0; round < 8; ++round) {
    const Tensor x16 = convert(random_f32({1, 4096}, 7610 + round), DType::kBF16);
    Tensor x = be->empty(DType::kBF16, {1, 4096});
    be->convert(gpu(x16.to_f32()), x);  // x written by a kernel just before the first GEMV
    be->linear(x, w1, y1);
    be->linear(y1, w2, y2);
    Tensor want1, want2;
    std::vector<float> bound1, bound2;
    reference(values(x16), h1, {}, 1, 2e-5, std::ldexp(1.0, -8), want1, bound1);
    EXPECT_TRUE(close(str("chain y1, round ", round), y1, want1, 1e-6 * max_abs(want1), bound1));
    reference(values(y1), h2, {}, 1, 2e-5, 0.0, want2, bound2);  // of the y1 the GEMV read
    EXPECT_TRUE(close(str("chain y2, round ", round), y2, want2, 1e-6 * max_abs(want2), bound2));
  }
  // The same rounds back to back, no host synchronization: round r + 1's first GEMV overwrites
  // y1 while round r's second GEMV may still be running (it must wait for it). Reference: W2 times
  // the host's y1 rounded to bf16 (the device's y1 may differ by one bf16 rounding per element,
  // hence the looser bound 2^-7 · Σ|y1||W2|).
  std::vector<Tensor> xs, y2s;
  for (int round = 0; round < 8; ++round) {
    xs.push_back(convert(random_f32({1, 4096}, 7620 + round), DType::kBF16));
    Tensor x = be->empty(DType::kBF16, {1, 4096});
    be->convert(gpu(xs.back().to_f32()), x);
    be->linear(x, w1, y1);
    y2s.push_back(be->empty(DType::kF32, {1, 4096}));
    be->linear(y1, w2, y2s.back());
  }
  for (int round = 0; round < 8; ++round) {
    Tensor want1, want2;
    std::vector<float> bound1, bound2;
    reference(values(xs[round]), h1, {}, 1, 2e-5, 0.0, want1, bound1);
    reference(values(convert(want1, DType::kBF16)), h2, {}, 1, std::ldexp(1.0, -7), 0.0, want2,
              bound2);
    EXPECT_TRUE(close(str("back-to-back y2, round ", round), y2s[round], want2,
                      1e-6 * max_abs(want2), bound2));
  }
}

// A weight above the 16 Mi-element dequantization scratch is multiplied in two row chunks.
TEST(AwqLinearGpu, LargeWeightIsDequantizedInChunks) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const HostAwq h = random_awq(4, 128, 4160, 4096, 7600);
  const LinearWeight w = linear_of(h, "test.awq_large");
  check_awq_linear(*be, h, w, 9, DType::kBF16, DType::kF32, 7601);
  check_awq_linear(*be, h, w, 1, DType::kBF16, DType::kBF16, 7602);
}

TEST(AwqLinearGpu, RejectsMalformedWeightsAndBackward) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const HostAwq h = random_awq(4, 32, 64, 96, 7700);
  const Tensor x = gpu(convert(random_f32({2, 96}, 7701), DType::kBF16));
  Tensor y = poisoned_gpu({2, 64}, DType::kBF16);
  auto expect_user_error = [&](AwqWeight bad, const std::string& needle) {
    LinearWeight w;
    w.storage = std::move(bad);
    w.name = "model.layers.0.mlp.up_proj";
    try {
      be->linear(x, w, y);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUser) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("up_proj"), std::string::npos) << e.what();
    }
  };
  AwqWeight bad = h.w;
  bad.qweight = h.w.qweight.view({96 * 8, 1});
  expect_user_error(bad, "qweight");
  bad = h.w;
  bad.scales = h.w.scales.to_f32();
  expect_user_error(bad, "scales");
  bad = h.w;
  bad.qzeros = h.w.qweight;
  expect_user_error(bad, "qzeros");
  bad = h.w;
  bad.bits = 2;
  expect_user_error(bad, "bits");
  bad = h.w;
  bad.group_size = 64;  // does not divide in = 96
  expect_user_error(bad, "group_size");

  // No backward through a quantized weight.
  LinearWeight w = linear_of(h, "test.awq_frozen");
  Tensor dx = gpu(Tensor::zeros(DType::kBF16, {2, 96})), dw, db;
  try {
    be->linear_backward(x, w, gpu(convert(random_f32({2, 64}, 7702), DType::kBF16)), dx, dw, db);
    ADD_FAILURE() << "linear_backward accepted an AWQ weight";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("awq"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("only dense weights"), std::string::npos) << e.what();
  }
}

TEST(AwqMoeGpu, AwqExpertsMatchDenseExpertsOfTheSameValues) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  auto be = backend::make_cuda_backend(0);
  const int64_t hidden = 96, inter = 64, e_count = 6, k = 2;
  uint64_t seed = 8000;
  std::vector<backend::ExpertWeights> awq(e_count), dense(e_count);
  auto dense_of = [](const HostAwq& h) {  // the dequantized values rounded to bf16
    const Tensor f = Tensor::copy_of(DType::kF32, {h.w.out, h.w.in}, h.dense.data());
    return backend::DenseWeight{convert(f, DType::kBF16)};
  };
  for (int64_t e = 0; e < e_count; ++e) {
    const HostAwq g = random_awq(4, 32, inter, hidden, ++seed);
    const HostAwq u = random_awq(4, 32, inter, hidden, ++seed);
    const HostAwq d = random_awq(e % 2 == 0 ? 4 : 8, 32, hidden, inter, ++seed);
    awq[e].gate = linear_of(g, "gate");
    awq[e].up = linear_of(u, "up");
    awq[e].down = linear_of(d, "down");
    dense[e].gate.storage = dense_of(g);
    dense[e].up.storage = dense_of(u);
    dense[e].down.storage = dense_of(d);
    dense[e].gate.name = "gate";
    dense[e].up.name = "up";
    dense[e].down.name = "down";
  }
  // (tokens, skewed): decode sizes (every expert <= 8 rows: AWQ GEMV per expert), balanced
  // prefill (padded batched GEMMs on the stack) and skewed prefill (expert 0 in every token:
  // grouped GEMMs on the stack).
  for (auto [t, skewed] : {std::pair<int64_t, bool>{1, false},
                           {3, false},
                           {4, true},
                           {33, false},
                           {200, false},
                           {40, true}}) {
    std::mt19937_64 rng(++seed);
    std::vector<int32_t> chosen;
    for (int64_t i = 0; i < t; ++i) {  // distinct experts from {0, .., 4}: expert 5 never runs
      const int32_t a = skewed ? 0 : static_cast<int32_t>(rng() % 5);
      chosen.push_back(a);
      chosen.push_back(static_cast<int32_t>((a + 1 + rng() % 4) % 5));
    }
    const Tensor ids = gpu(Tensor::copy_of(DType::kI32, {t, k}, chosen.data()));
    const Tensor w = gpu(random_f32({t, k}, ++seed));
    const Tensor x = gpu(convert(random_f32({t, hidden}, ++seed), DType::kBF16));
    Tensor want = poisoned_gpu({t, hidden}, DType::kBF16);
    be->moe_experts(x, ids, w, dense, want);
    Tensor got = poisoned_gpu({t, hidden}, DType::kBF16);
    be->moe_experts(x, ids, w, awq, got);
    const bool stacked = t > 4;  // some expert gets more than 8 rows
    const double rel = stacked ? std::ldexp(1.0, -7) : 2e-2;
    const double scale = max_abs(want);
    ASSERT_GT(scale, 0.0);
    EXPECT_TRUE(
        close(str("awq moe_experts T=", t, skewed ? " skewed" : ""), got, want, rel * scale));
  }
}

}  // namespace
}  // namespace refinery
