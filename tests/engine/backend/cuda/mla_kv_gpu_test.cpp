// The batched-prefill ops of the MLA forward on CUDA: rope over all segments in one call,
// mla_assemble_kv (one kernel) and moe_experts accumulating onto the shared experts' output.
// Bounds:
//   - rope with segment_length: bitwise equal to one call per segment (today's model loop), f32
//     and bf16, vectorized and scalar paths, in place and not; the backward likewise.
//   - mla_assemble_kv: bitwise equal to the Backend default on the same CUDA backend (k_pe copied
//     out, rope, three copy_columns: the sequence the model ran before), f32 and bf16, both
//     pairings, the vectorized and the scalar kernel; f32 also within 1e-6 · max|keys| of the CPU
//     (FMA contraction in the rope part).
//   - moe_experts(accumulate): the CPU's accumulate within moe_gpu_test's bound for bf16 experts
//     (2e-2 · max|y|: the GEMM inputs are rounded to bf16) on both routes (device-routed grouped
//     GEMM and host-routed cuBLAS), f32 and bf16 activations.
#include <algorithm>
#include <cstring>
#include <random>

#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using model::RopePairing;

backend::RopeTable on_device(const backend::RopeTable& table) {
  backend::RopeTable d = table;
  d.cos = gpu(table.cos);
  d.sin = gpu(table.sin);
  return d;
}

TEST(RopeSegmentsGpu, OneCallEqualsOneCallPerSegment) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t t, length, heads, d, offset;
    int rotary;
    RopePairing pairing;
    int64_t first;
  };
  const Case cases[] = {
      {64, 16, 16, 192, 128, 64, RopePairing::kInterleaved, 0},  // MLA q (V2-Lite heads)
      {64, 16, 1, 64, 0, 64, RopePairing::kInterleaved, 0},      // MLA k_pe
      {36, 12, 4, 64, 0, 64, RopePairing::kHalfSplit, 3},        // GQA q/k, first position 3
      {15, 5, 3, 100, 16, 50, RopePairing::kHalfSplit, 2},       // general kernel
      {8, 1, 2, 16, 0, 16, RopePairing::kInterleaved, 7},        // segments of one row
  };
  uint64_t seed = 5000;
  for (const DType act : {DType::kF32, DType::kBF16}) {
    auto be = backend::make_cuda_backend(0, act);
    for (const Case& c : cases) {
      // The table covers first + length positions only (not first + T).
      const backend::RopeTable table =
          random_table(c.first + c.length, c.rotary, c.pairing, ++seed);
      const backend::RopeTable device_table = on_device(table);
      const std::vector<int64_t> shape{c.t, c.heads, c.d};
      const Tensor x = random_f32(shape, ++seed);
      const std::string what = str("rope segments T=", c.t, " L=", c.length, " D=", c.d,
                                   " offset=", c.offset, " ", dtype_name(act));
      Tensor want = poisoned_gpu(shape, act);
      const Tensor gx = dev(x, act);
      for (int64_t r0 = 0; r0 < c.t; r0 += c.length) {
        Tensor want_b = want.slice(r0, r0 + c.length);
        be->rope(gx.slice(r0, r0 + c.length), device_table, c.first, c.offset, want_b);
      }
      Tensor got = poisoned_gpu(shape, act);
      be->rope(gx, device_table, c.first, c.offset, got, c.length);
      EXPECT_TRUE(bitwise_equal(got, want)) << what << ": out of place";
      Tensor inplace = dev(x, act);
      be->rope(inplace, table, c.first, c.offset, inplace, c.length);  // host table
      EXPECT_TRUE(bitwise_equal(inplace, want)) << what << ": in place (host table)";
      Tensor scalar = misaligned_dev(x, act);
      be->rope(scalar, device_table, c.first, c.offset, scalar, c.length);
      EXPECT_TRUE(bitwise_equal(scalar, want)) << what << ": scalar path";
      if (act == DType::kF32) {  // and the CPU's segments
        Tensor cpu_want = Tensor::empty(DType::kF32, shape);
        backend::make_cpu_backend(1)->rope(x, table, c.first, c.offset, cpu_want, c.length);
        EXPECT_TRUE(close(what + " vs cpu", got, cpu_want, 1e-6 * max_abs(cpu_want)));
      }

      for (const backend::GradWrite write :
           {backend::GradWrite::kAdd, backend::GradWrite::kOverwrite}) {
        const Tensor dx0 = random_f32(shape, ++seed);
        Tensor dx_want = dev(dx0, act);
        for (int64_t r0 = 0; r0 < c.t; r0 += c.length) {
          Tensor b = dx_want.slice(r0, r0 + c.length);
          be->rope_backward(gx.slice(r0, r0 + c.length), device_table, c.first, c.offset, b,
                            write);
        }
        Tensor dx = dev(dx0, act);
        be->rope_backward(gx, device_table, c.first, c.offset, dx, write, c.length);
        EXPECT_TRUE(bitwise_equal(dx, dx_want)) << what << ": backward";
      }
    }
  }
}

TEST(MlaAssembleKvGpu, EqualsTheReferenceSequenceBitwise) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t t, length, heads, dn, dv, dr, r, first;
    bool misaligned;  // kv in a view one element past a 16-byte boundary: the scalar kernel
  };
  const Case cases[] = {
      {64, 16, 16, 128, 128, 64, 512, 0, false},  // V2-Lite widths, 4 segments
      {48, 0, 16, 128, 128, 64, 512, 5, false},   // one segment, a cached prefix of 5
      {33, 11, 3, 24, 40, 16, 8, 2, false},        // small vector widths
      {12, 4, 5, 12, 20, 12, 6, 1, false},         // widths not multiples of 8: scalar kernel
      {16, 8, 4, 128, 128, 64, 512, 0, true},     // aligned widths, misaligned kv: scalar
      {1, 0, 16, 128, 128, 64, 512, 9, false},    // a decode step
  };
  uint64_t seed = 6000;
  auto cpu = backend::make_cpu_backend(1);
  for (const DType act : {DType::kF32, DType::kBF16}) {
    auto be = backend::make_cuda_backend(0, act);
    for (const RopePairing pairing : {RopePairing::kInterleaved, RopePairing::kHalfSplit})
      for (const Case& c : cases) {
        const int64_t positions = c.first + (c.length == 0 ? c.t : c.length);
        const backend::RopeTable table =
            random_table(positions, static_cast<int>(c.dr), pairing, ++seed);
        const backend::RopeTable device_table = on_device(table);
        const Tensor kv = random_f32({c.t, c.heads * (c.dn + c.dv)}, ++seed);
        const Tensor ckv = random_f32({c.t, c.r + c.dr}, ++seed);
        const Tensor gkv = c.misaligned ? misaligned_dev(kv, act) : dev(kv, act);
        const Tensor gckv = dev(ckv, act);
        const std::vector<int64_t> kshape{c.t, c.heads, c.dn + c.dr}, vshape{c.t, c.heads, c.dv};
        const std::string what =
            str("mla_assemble_kv T=", c.t, " L=", c.length, " H=", c.heads, " dn=", c.dn,
                " dv=", c.dv, " dr=", c.dr, c.misaligned ? " misaligned" : "",
                pairing == RopePairing::kInterleaved ? " interleaved " : " half-split ",
                dtype_name(act));
        Tensor want_k = poisoned_gpu(kshape, act), want_v = poisoned_gpu(vshape, act);
        be->Backend::mla_assemble_kv(gkv, gckv, device_table, c.first, c.length, want_k, want_v);
        Tensor got_k = poisoned_gpu(kshape, act), got_v = poisoned_gpu(vshape, act);
        be->mla_assemble_kv(gkv, gckv, device_table, c.first, c.length, got_k, got_v);
        EXPECT_TRUE(bitwise_equal(got_k, want_k)) << what << ": keys";
        EXPECT_TRUE(bitwise_equal(got_v, want_v)) << what << ": values";
        Tensor host_k = poisoned_gpu(kshape, act), host_v = poisoned_gpu(vshape, act);
        be->mla_assemble_kv(gkv, gckv, table, c.first, c.length, host_k, host_v);  // host table
        EXPECT_TRUE(bitwise_equal(host_k, want_k)) << what << ": keys (host table)";
        if (act == DType::kF32) {
          Tensor cpu_k = Tensor::empty(DType::kF32, kshape);
          Tensor cpu_v = Tensor::empty(DType::kF32, vshape);
          cpu->mla_assemble_kv(kv, ckv, table, c.first, c.length, cpu_k, cpu_v);
          EXPECT_TRUE(close(what + " keys vs cpu", got_k, cpu_k, 1e-6 * max_abs(cpu_k)));
          EXPECT_TRUE(close(what + " values vs cpu", got_v, cpu_v, 0.0));
        }
      }
  }
}

// moe_experts(accumulate) onto a y holding another output (the shared experts') vs the CPU's.
TEST(MoeAccumulateGpu, AddsOntoYOnBothRoutes) {
  SKIP_WITHOUT_GPU();
  auto cpu = backend::make_cpu_backend(1);
  const int64_t hidden = 136, inter = 88, e_count = 16, k = 4;
  uint64_t seed = 8000;
  const std::vector<backend::ExpertWeights> experts =
      random_experts(e_count, inter, hidden, seed, 0.2f, DType::kBF16);
  for (const DType act : {DType::kF32, DType::kBF16}) {
    auto be = backend::make_cuda_backend(0, act);
    for (int64_t t : {1, 37, 300}) {
      std::mt19937_64 rng(++seed);
      std::vector<int32_t> chosen;
      for (int64_t i = 0; i < t; ++i) {
        std::vector<int32_t> row;
        while (static_cast<int64_t>(row.size()) < k) {
          const int32_t e = static_cast<int32_t>(rng() % 14);  // experts 14, 15 get none
          if (std::find(row.begin(), row.end(), e) == row.end()) row.push_back(e);
        }
        chosen.insert(chosen.end(), row.begin(), row.end());
      }
      const Tensor ids = Tensor::copy_of(DType::kI32, {t, k}, chosen.data());
      const Tensor w = random_f32({t, k}, ++seed);
      // x and the prior y rounded to the activation dtype for both backends.
      const Tensor x_act = convert(random_f32({t, hidden}, ++seed), act);
      const Tensor x_f32 = Tensor::copy_of(DType::kF32, {t, hidden}, values(x_act).data());
      const Tensor y0_act = convert(random_f32({t, hidden}, ++seed), act);
      Tensor want = Tensor::copy_of(DType::kF32, {t, hidden}, values(y0_act).data());
      cpu->moe_experts(x_f32, ids, w, experts, want, /*accumulate=*/true);
      for (const std::string route : {"ggemm", "cublas"}) {
        const ScopedEnv env("REFINERY_MOE_GEMM", route.c_str());
        Tensor got = gpu(y0_act);
        be->moe_experts(gpu(x_act), gpu(ids), gpu(w), experts, got, /*accumulate=*/true);
        EXPECT_TRUE(close(str("moe_experts accumulate ", route, " ", dtype_name(act), " T=", t),
                          got, want, 2e-2 * max_abs(want)));
      }
    }
  }
}

}  // namespace
}  // namespace refinery
