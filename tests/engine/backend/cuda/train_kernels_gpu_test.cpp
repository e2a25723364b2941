// The vectorized training kernels (rms_norm_backward's warp-per-row path, swiglu_backward and
// rope / rope_backward on 16-byte vectors) vs the CPU reference backend, on the 1.4B student's
// shapes and on the edges of each fast path (tails, idle lanes, the general fallbacks), plus:
//   rms_norm_backward is bitwise reproducible across calls (fixed reduction order);
//   swiglu_backward and rope / rope_backward give bitwise the same results on the vectorized path
//   (aligned operands) and on the scalar path (the same values at a misaligned address), i.e. the
//   vectorization did not change the per-element f32 formulas.
// Bounds as backward_gpu_test.cpp: row reductions 1e-5, element-wise 1e-6 (f32) / 1e-2 (bf16),
// relative to the largest reference value.
#include <cstring>

#include "cuda_test_util.hpp"

namespace refinery {
namespace {

using namespace cuda_test;

Tensor rounded(const Tensor& t, DType dtype) {
  if (dtype == DType::kF32) return t;
  const std::vector<float> v = values(convert(t, dtype));
  return Tensor::copy_of(DType::kF32, t.shape(), v.data());
}

struct CudaTrainKernels : ::testing::Test {
  std::shared_ptr<backend::Backend> cpu = backend::make_cpu_backend(4);
  double tol(double rel, const Tensor& want) { return rel * std::max(1.0, max_abs(want)); }
};

// ---- rms_norm_backward ----

struct NormCase {
  int64_t rows, d;
  DType wt, x_dtype, dy_dtype;
  double rel;
};

void check_rms_norm_backward(backend::Backend& cpu, const NormCase& c, uint64_t seed,
                             bool repeat_bitwise) {
  auto be = backend::make_cuda_backend(0, c.x_dtype);
  const Tensor x = rounded(random_f32({c.rows, c.d}, seed, 3.0f), c.x_dtype);
  const Tensor dy = rounded(random_f32({c.rows, c.d}, seed + 1), c.dy_dtype);
  const Tensor w = convert(random_f32({c.d}, seed + 2), c.wt);
  const Tensor dx0 = rounded(random_f32({c.rows, c.d}, seed + 3), c.x_dtype);
  const Tensor dw0 = random_f32({c.d}, seed + 4);
  Tensor dx = dx0.clone(), dw = dw0.clone();
  cpu.rms_norm_backward(x, w, 1e-6f, dy, dx, dw);
  const Tensor gx = dev(x, c.x_dtype), gdy = dev(dy, c.dy_dtype);
  Tensor gdx = dev(dx0, c.x_dtype), gdw = gpu(dw0);
  be->rms_norm_backward(gx, w, 1e-6f, gdy, gdx, gdw);
  const std::string what = str("rms_norm_backward [", c.rows, ", ", c.d, "] x ",
                               dtype_name(c.x_dtype), " dy ", dtype_name(c.dy_dtype), " w ",
                               dtype_name(c.wt));
  const double rel_w = std::max(c.rel, 1e-5);
  EXPECT_TRUE(close(what + " dx", gdx, dx, c.rel * std::max(1.0, max_abs(dx))));
  EXPECT_TRUE(close(what + " dweight", gdw, dw, rel_w * std::max(1.0, max_abs(dw))));
  // Each gradient alone.
  Tensor none, gdw2 = gpu(dw0), gdx2 = dev(dx0, c.x_dtype);
  be->rms_norm_backward(gx, w, 1e-6f, gdy, none, gdw2);
  be->rms_norm_backward(gx, w, 1e-6f, gdy, gdx2, none);
  EXPECT_TRUE(bitwise_equal(gdw2, gdw)) << what << ": dweight alone differs from dweight with dx";
  EXPECT_TRUE(bitwise_equal(gdx2, gdx)) << what << ": dx alone differs from dx with dweight";
  if (repeat_bitwise) {
    Tensor gdx3 = dev(dx0, c.x_dtype), gdw3 = gpu(dw0);
    be->rms_norm_backward(gx, w, 1e-6f, gdy, gdx3, gdw3);
    EXPECT_TRUE(bitwise_equal(gdx3, gdx)) << what << ": dx differs between two calls";
    EXPECT_TRUE(bitwise_equal(gdw3, gdw)) << what << ": dweight differs between two calls";
  }
}

TEST_F(CudaTrainKernels, RmsNormBackwardStudentShapeMatchesCpuAndIsReproducible) {
  SKIP_WITHOUT_GPU();
  // The 1.4B student's residual stream: f32 x [8192, 2048], bf16 dy; f32 and bf16 weights.
  check_rms_norm_backward(*cpu, {8192, 2048, DType::kF32, DType::kF32, DType::kBF16, 1e-5}, 700,
                          true);
  check_rms_norm_backward(*cpu, {8192, 2048, DType::kBF16, DType::kF32, DType::kBF16, 1e-5}, 710,
                          false);
}

TEST_F(CudaTrainKernels, RmsNormBackwardFastPathEdgesAndFallbacks) {
  SKIP_WITHOUT_GPU();
  const NormCase cases[] = {
      {1500, 2048, DType::kF32, DType::kF32, DType::kBF16, 1e-5},  // rows > warps, uneven
      {3, 8, DType::kF32, DType::kF32, DType::kF32, 1e-5},         // 1 chunk, 31 idle lanes
      {40, 264, DType::kF16, DType::kF32, DType::kF32, 1e-5},      // 33 chunks: 2 per lane
      {1030, 4096, DType::kF32, DType::kF32, DType::kF32, 1e-5},   // 16 per lane, not cached
      {50, 2056, DType::kBF16, DType::kBF16, DType::kBF16, 1e-2},  // 9 per lane -> 16
      {37, 1000, DType::kF32, DType::kF32, DType::kBF16, 1e-5},    // 125 chunks
      {37, 4104, DType::kF32, DType::kF32, DType::kF32, 1e-5},     // D > 4096: general kernel
      {37, 202, DType::kF32, DType::kF32, DType::kF32, 1e-5}};     // D % 8 != 0: general
  uint64_t seed = 720;
  for (const NormCase& c : cases) check_rms_norm_backward(*cpu, c, seed += 10, true);
}

// ---- swiglu_backward ----

TEST_F(CudaTrainKernels, SwigluBackwardVectorizedMatchesCpuAndScalarPath) {
  SKIP_WITHOUT_GPU();
  struct Case {
    std::vector<int64_t> shape;
    DType act;
  };
  // [2048, 5632]: a quarter of the student's MLP activations; 1001 and 13: vector tails.
  const Case cases[] = {{{2048, 5632}, DType::kBF16}, {{2048, 5632}, DType::kF32},
                        {{7, 143}, DType::kBF16},      {{1001}, DType::kF32},
                        {{13}, DType::kBF16}};
  uint64_t seed = 800;
  for (const Case& c : cases) {
    auto be = backend::make_cuda_backend(0, c.act);
    const double rel = c.act == DType::kF32 ? 1e-6 : 1e-2;
    const Tensor gate = rounded(random_f32(c.shape, ++seed, 3.0f), c.act);
    const Tensor up = rounded(random_f32(c.shape, ++seed), c.act);
    const Tensor dy = rounded(random_f32(c.shape, ++seed), c.act);
    const Tensor dg0 = rounded(random_f32(c.shape, ++seed), c.act);
    const Tensor du0 = rounded(random_f32(c.shape, ++seed), c.act);
    Tensor dg = dg0.clone(), du = du0.clone();
    cpu->swiglu_backward(gate, up, dy, dg, du);
    Tensor gdg = dev(dg0, c.act), gdu = dev(du0, c.act);
    be->swiglu_backward(dev(gate, c.act), dev(up, c.act), dev(dy, c.act), gdg, gdu);
    const std::string what = str("swiglu_backward ", shape_to_string(c.shape), " ",
                                 dtype_name(c.act));
    EXPECT_TRUE(close(what + " dgate", gdg, dg, tol(rel, dg)));
    EXPECT_TRUE(close(what + " dup", gdu, du, tol(rel, du)));
    // The scalar path (misaligned operands) gives bitwise the same gradients.
    Tensor sdg = misaligned_dev(dg0, c.act), sdu = misaligned_dev(du0, c.act);
    be->swiglu_backward(misaligned_dev(gate, c.act), misaligned_dev(up, c.act),
                        misaligned_dev(dy, c.act), sdg, sdu);
    EXPECT_TRUE(bitwise_equal(sdg, gdg)) << what << ": dgate, vector vs scalar path";
    EXPECT_TRUE(bitwise_equal(sdu, gdu)) << what << ": dup, vector vs scalar path";
    // One gradient alone.
    Tensor none, gdu2 = dev(du0, c.act);
    be->swiglu_backward(dev(gate, c.act), dev(up, c.act), dev(dy, c.act), none, gdu2);
    EXPECT_TRUE(bitwise_equal(gdu2, gdu)) << what << ": dup alone";
  }
}

// ---- rope / rope_backward ----

TEST_F(CudaTrainKernels, RopeVectorizedMatchesCpuAndScalarPath) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t t, heads, d, offset;
    int rotary;
    model::RopePairing pairing;
    int64_t first;
    DType act;
  };
  using model::RopePairing;
  const Case cases[] = {
      {1030, 32, 64, 0, 64, RopePairing::kHalfSplit, 0, DType::kBF16},  // the student's q
      {1030, 4, 64, 0, 64, RopePairing::kHalfSplit, 5, DType::kF32},    // its k, f32
      {37, 6, 128, 0, 128, RopePairing::kInterleaved, 3, DType::kBF16},
      {13, 3, 192, 128, 64, RopePairing::kInterleaved, 10, DType::kF32},  // MLA: pass-through
      {13, 4, 96, 16, 48, RopePairing::kHalfSplit, 2, DType::kBF16},      // both sides
      {13, 4, 100, 16, 50, RopePairing::kHalfSplit, 2, DType::kF32}};     // general kernel
  uint64_t seed = 900;
  for (const Case& c : cases) {
    auto be = backend::make_cuda_backend(0, c.act);
    const double rel = c.act == DType::kF32 ? 1e-6 : 1e-2;
    backend::RopeTable table;
    table.rotary_dim = c.rotary;
    table.pairing = c.pairing;
    table.cos = random_f32({c.first + c.t + 4, c.rotary / 2}, ++seed);
    table.sin = random_f32({c.first + c.t + 4, c.rotary / 2}, ++seed);
    backend::RopeTable device_table = table;
    device_table.cos = gpu(table.cos);
    device_table.sin = gpu(table.sin);
    const std::vector<int64_t> shape{c.t, c.heads, c.d};
    const Tensor x = rounded(random_f32(shape, ++seed), c.act);
    const Tensor dx0 = rounded(random_f32(shape, ++seed), c.act);
    const std::string what = str("rope d=", c.d, " offset ", c.offset, " rotary ", c.rotary, " ",
                                 dtype_name(c.act));
    {  // forward: out of place, in place, and the scalar path
      Tensor want = Tensor::empty(DType::kF32, shape);
      cpu->rope(x, table, c.first, c.offset, want);
      Tensor got = poisoned_gpu(shape, c.act);
      be->rope(dev(x, c.act), device_table, c.first, c.offset, got);
      EXPECT_TRUE(close(what, got, want, tol(rel, want)));
      Tensor inplace = dev(x, c.act);
      be->rope(inplace, table, c.first, c.offset, inplace);  // host table
      EXPECT_TRUE(bitwise_equal(inplace, got)) << what << ": in place";
      Tensor scalar = misaligned_dev(x, c.act);
      be->rope(scalar, device_table, c.first, c.offset, scalar);
      EXPECT_TRUE(bitwise_equal(scalar, got)) << what << ": vector vs scalar path";
    }
    {  // backward
      Tensor want = dx0.clone();
      cpu->rope_backward(x, table, c.first, c.offset, want);
      Tensor got = dev(dx0, c.act);
      be->rope_backward(dev(x, c.act), device_table, c.first, c.offset, got);
      EXPECT_TRUE(close(what + " backward", got, want, tol(rel, want)));
      Tensor scalar = misaligned_dev(dx0, c.act);
      be->rope_backward(misaligned_dev(x, c.act), device_table, c.first, c.offset, scalar);
      EXPECT_TRUE(bitwise_equal(scalar, got)) << what << ": backward, vector vs scalar path";
      // kOverwrite into poisoned dx on both paths = the CPU adding into zeros.
      Tensor fresh = Tensor::zeros(DType::kF32, shape);
      cpu->rope_backward(x, table, c.first, c.offset, fresh);
      Tensor written = poisoned_gpu(shape, c.act);
      be->rope_backward(dev(x, c.act), device_table, c.first, c.offset, written,
                        backend::GradWrite::kOverwrite);
      EXPECT_TRUE(close(what + " backward overwrite", written, fresh, tol(rel, fresh)));
      Tensor written_scalar = misaligned_dev(Tensor::zeros(DType::kF32, shape), c.act);
      be->rope_backward(misaligned_dev(x, c.act), device_table, c.first, c.offset, written_scalar,
                        backend::GradWrite::kOverwrite);
      EXPECT_TRUE(bitwise_equal(written_scalar, written)) << what << ": overwrite, vector/scalar";
    }
  }
}

}  // namespace
}  // namespace refinery
