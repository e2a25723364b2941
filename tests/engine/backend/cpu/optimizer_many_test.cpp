// The multi-tensor optimizer ops' defaults (backend.cpp), which the CPU backend runs: they must be
// bitwise the per-tensor loops they replace, because ModelOptimizer now calls them and the CPU
// training trajectories (distill resume tests) are compared bit for bit.
//   sum_squares_many(ts) == Σ_k sum_squares(ts[k]) in tensor order (EXPECT_EQ, not NEAR)
//   adamw_update_many == adamw_update per tensor with s.decay = p.decay, every output bitwise
#include <cmath>
#include <cstring>
#include <vector>

#include "backend_test_util.hpp"

namespace refinery::backend {
namespace {

using test::random_f32;

// Awkward sizes: empty, tiny, around the CPU's 2^16 chunk and 2^15 parallel threshold.
const std::vector<int64_t> kSizes = {1, 3, 0, 1000, 65537, 2, 32769, 65536, 7, 131073, 5};

AdamWScalars scalars(int step, float grad_scale) {
  return backend::test::adamw_test_scalars(step, grad_scale);
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

TEST(CpuOptimizerMany, SumSquaresManyIsTheLoopInTensorOrder) {
  auto be = make_cpu_backend(4);
  std::vector<Tensor> ts;
  double loop = 0.0;
  long double direct = 0.0L;  // the host reference, in extended precision (x86: 64-bit mantissa)
  for (std::size_t k = 0; k < kSizes.size(); ++k) {
    Tensor t = random_f32({kSizes[k]}, 40 + k, k % 3 == 0 ? 1e-3f : 2.0f);
    if (k % 2 == 1) t = test::convert(t, DType::kBF16);
    ts.push_back(t);
    loop += be->sum_squares(t);
    for (float v : test::values(t)) direct += static_cast<long double>(v) * v;
  }
  const double got = be->sum_squares_many(ts);
  EXPECT_EQ(got, loop);
  EXPECT_NEAR(got, static_cast<double>(direct), 1e-12 * static_cast<double>(direct));
  EXPECT_EQ(be->sum_squares_many({}), 0.0);
  // A shape other than [n] is summed like its flat view.
  const Tensor m = random_f32({37, 41}, 3);
  EXPECT_EQ(be->sum_squares_many({&m, 1}), be->sum_squares(m));
  // Bad input is reported as by sum_squares.
  const Tensor bad = Tensor::zeros(DType::kI32, {4});
  EXPECT_THROW(be->sum_squares_many({&bad, 1}), Error);
}

TEST(CpuOptimizerMany, AdamwUpdateManyIsThePerTensorLoopBitwise) {
  auto be = make_cpu_backend(4);
  struct Set {
    std::vector<AdamWTensors> params;
  };
  Set many, loop;
  for (std::size_t k = 0; k < kSizes.size(); ++k) {
    const int64_t n = kSizes[k];
    const Tensor master = random_f32({n}, 100 + k), m = random_f32({n}, 200 + k, 0.01f);
    Tensor v = random_f32({n}, 300 + k, 1e-4f);
    for (int64_t i = 0; i < n; ++i) v.mutable_data<float>()[i] = std::abs(v.data<float>()[i]);
    const DType compute = k % 3 == 0 ? DType::kBF16 : k % 3 == 1 ? DType::kF32 : DType::kF64;
    for (Set* set : {&many, &loop}) {
      AdamWTensors p;
      p.master = master.clone();
      p.exp_avg = m.clone();
      p.exp_avg_sq = v.clone();
      if (compute != DType::kF64) p.compute = Tensor::zeros(compute, {n});  // kF64: none
      p.decay = k % 2 == 0;
      set->params.push_back(p);
    }
  }
  for (int step = 1; step <= 3; ++step) {
    const AdamWScalars s = scalars(step, step == 2 ? 0.37f : 1.0f);
    for (std::size_t k = 0; k < kSizes.size(); ++k) {
      const Tensor g = random_f32({kSizes[k]}, 1000 * step + k, step == 3 ? 1e-4f : 1.0f);
      many.params[k].grad = g;
      loop.params[k].grad = g;
    }
    be->adamw_update_many(many.params, s);
    for (AdamWTensors& p : loop.params) {
      AdamWScalars si = s;
      si.decay = p.decay;
      be->adamw_update(p.master, p.grad, p.exp_avg, p.exp_avg_sq, si, p.compute);
    }
    for (std::size_t k = 0; k < kSizes.size(); ++k) {
      const AdamWTensors &a = many.params[k], &b = loop.params[k];
      SCOPED_TRACE(testing::Message() << "step " << step << " tensor " << k << " n=" << kSizes[k]);
      ASSERT_TRUE(same_bytes(a.master, b.master));
      ASSERT_TRUE(same_bytes(a.exp_avg, b.exp_avg));
      ASSERT_TRUE(same_bytes(a.exp_avg_sq, b.exp_avg_sq));
      ASSERT_TRUE(same_bytes(a.compute, b.compute));
    }
  }
  // The per-tensor decay flag is honoured: a decayed and an undecayed copy of one tensor with
  // zero gradients and zero moments differ by the decay alone.
  const Tensor w0 = random_f32({9}, 5);
  std::vector<AdamWTensors> pair(2);
  for (int j = 0; j < 2; ++j) {
    pair[j].master = w0.clone();
    pair[j].grad = Tensor::zeros(DType::kF32, {9});
    pair[j].exp_avg = Tensor::zeros(DType::kF32, {9});
    pair[j].exp_avg_sq = Tensor::zeros(DType::kF32, {9});
    pair[j].decay = j == 0;
  }
  AdamWScalars s = scalars(1, 1.0f);
  s.decay = true;  // ignored: the entries' flags decide
  be->adamw_update_many(pair, s);
  for (int64_t i = 0; i < 9; ++i) {
    EXPECT_EQ(pair[0].master.data<float>()[i], w0.data<float>()[i] * s.decay_factor) << i;
    EXPECT_EQ(pair[1].master.data<float>()[i], w0.data<float>()[i]) << i;
  }
  // No tensors: nothing to do.
  EXPECT_NO_THROW(be->adamw_update_many({}, s));
}

}  // namespace
}  // namespace refinery::backend
