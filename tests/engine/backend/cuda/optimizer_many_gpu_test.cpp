// The CUDA multi-tensor optimizer ops (optimizer_ops.cu) on ~20 tensors of awkward sizes (empty,
// 1, 3, around the 4096-element update chunk and the 32768-element sum chunk, 65537, ~1M):
//   adamw_update_many  bitwise equal to adamw_update per tensor on the GPU and to the CPU
//                      default (= the CPU loop), bf16 / f32 / no compute copy, with and without
//                      decay, three steps with different scalars
//   sum_squares_many   relative 1e-12 to Σ_k sum_squares(tensor k) and to a host double sum,
//                      the same double on every call and from a second backend (run to run)
//   ModelOptimizer     on CUDA (f32 activations, no clipping) bitwise equal to the CPU one
#include <array>
#include <cmath>

#include "cuda_test_util.hpp"
#include "engine/model/model_config.hpp"
#include "engine/train/optimizer.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
using backend::AdamWScalars;
using backend::AdamWTensors;

const std::vector<int64_t> kSizes = {1,    3,     1000,  65537, 0,     4096,   4095,
                                     4097, 32768, 32769, 2,     8191,  1048583, 5,
                                     777,  65536, 12289, 1,     40000, 257};

AdamWScalars scalars(int step, float grad_scale) {
  return backend::test::adamw_test_scalars(step, grad_scale);
}

// The host bytes of `t` (downloaded), for memcmp.
Tensor host(const Tensor& t) { return t.device() == Device::kCPU ? t : t.to(Device::kCPU); }
bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  const Tensor ha = host(a), hb = host(b);
  return ha.dtype() == hb.dtype() && ha.numel() == hb.numel() &&
         std::memcmp(ha.data(), hb.data(), ha.nbytes()) == 0;
}

TEST(CudaOptimizerMany, AdamwUpdateManyIsBitwiseThePerTensorOp) {
  SKIP_WITHOUT_GPU();
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0, DType::kBF16);
  // Three copies of the same state: the GPU multi-tensor op, the GPU per-tensor op, the CPU.
  std::array<std::vector<AdamWTensors>, 3> sets;
  for (std::size_t k = 0; k < kSizes.size(); ++k) {
    const int64_t n = kSizes[k];
    const Tensor master = random_f32({n}, 100 + k), m = random_f32({n}, 200 + k, 0.01f);
    Tensor v = random_f32({n}, 300 + k, 1e-4f);
    for (int64_t i = 0; i < n; ++i) v.mutable_data<float>()[i] = std::abs(v.data<float>()[i]);
    // Compute copies bf16, f32 or none, and decay on/off, in every combination over k.
    const int kind = static_cast<int>(k % 3);
    const DType compute = kind == 0 ? DType::kBF16 : DType::kF32;
    for (std::size_t j = 0; j < 3; ++j) {
      AdamWTensors p;
      const bool on_gpu = j < 2;
      p.master = on_gpu ? gpu(master) : master.clone();
      p.exp_avg = on_gpu ? gpu(m) : m.clone();
      p.exp_avg_sq = on_gpu ? gpu(v) : v.clone();
      if (kind != 2) p.compute = on_gpu ? poisoned_gpu({n}, compute) : Tensor::zeros(compute, {n});
      p.decay = (k / 3) % 2 == 0;
      sets[j].push_back(p);
    }
  }
  for (int step = 1; step <= 3; ++step) {
    const AdamWScalars s = scalars(step, step == 2 ? 0.37f : 1.0f);
    for (std::size_t k = 0; k < kSizes.size(); ++k) {
      Tensor g = random_f32({kSizes[k]}, 1000 * step + k, step == 3 ? 1e-4f : 1.0f);
      for (int64_t i = 0; i < g.numel(); i += 13) g.mutable_data<float>()[i] = 0.0f;
      sets[0][k].grad = gpu(g);
      sets[1][k].grad = sets[0][k].grad;
      sets[2][k].grad = g;
    }
    be->adamw_update_many(sets[0], s);
    for (AdamWTensors& p : sets[1]) {
      AdamWScalars si = s;
      si.decay = p.decay;
      be->adamw_update(p.master, p.grad, p.exp_avg, p.exp_avg_sq, si, p.compute);
    }
    cpu->adamw_update_many(sets[2], s);
    for (std::size_t k = 0; k < kSizes.size(); ++k) {
      SCOPED_TRACE(testing::Message() << "step " << step << " tensor " << k << " n=" << kSizes[k]);
      for (std::size_t j : {1, 2}) {
        const AdamWTensors &a = sets[0][k], &b = sets[j][k];
        const char* other = j == 1 ? "the GPU adamw_update" : "the CPU";
        EXPECT_TRUE(same_bytes(a.master, b.master)) << "master vs " << other;
        EXPECT_TRUE(same_bytes(a.exp_avg, b.exp_avg)) << "exp_avg vs " << other;
        EXPECT_TRUE(same_bytes(a.exp_avg_sq, b.exp_avg_sq)) << "exp_avg_sq vs " << other;
        EXPECT_TRUE(same_bytes(a.compute, b.compute)) << "compute vs " << other;
      }
    }
  }
  // The update did something (not comparing untouched copies).
  const std::vector<float> moved = values(sets[0][12].master);
  const std::vector<float> init = values(random_f32({kSizes[12]}, 112));
  EXPECT_GT(backend::test::max_abs_diff(moved, init), 1e-3);
  // No tensors, or only empty ones: nothing to do.
  EXPECT_NO_THROW(be->adamw_update_many({}, scalars(1, 1.0f)));
  // Host tensors are rejected.
  std::vector<AdamWTensors> wrong = {sets[2][0]};
  EXPECT_THROW(be->adamw_update_many(wrong, scalars(1, 1.0f)), Error);
}

TEST(CudaOptimizerMany, SumSquaresManyMatchesTheLoopAndIsDeterministic) {
  SKIP_WITHOUT_GPU();
  auto be = backend::make_cuda_backend(0, DType::kBF16);
  std::vector<Tensor> ts;
  double loop = 0.0;
  long double direct = 0.0L;  // the host reference, in extended precision (x86: 64-bit mantissa)
  for (std::size_t k = 0; k < kSizes.size(); ++k) {
    Tensor t = random_f32({kSizes[k]}, 40 + k, k % 4 == 0 ? 1e-3f : 2.0f);
    if (k % 2 == 1) t = convert(t, DType::kBF16);
    for (float x : values(t)) direct += static_cast<long double>(x) * x;
    ts.push_back(gpu(t));
    loop += be->sum_squares(ts.back());
  }
  // A 2-D tensor is summed like its flat view.
  ts.push_back(gpu(random_f32({37, 1029}, 7)));
  loop += be->sum_squares(ts.back());
  for (float x : values(ts.back())) direct += static_cast<long double>(x) * x;

  const double got = be->sum_squares_many(ts);
  EXPECT_NEAR(got, loop, 1e-12 * loop);
  EXPECT_NEAR(got, static_cast<double>(direct), 1e-12 * static_cast<double>(direct));
  for (int run = 0; run < 3; ++run) EXPECT_EQ(be->sum_squares_many(ts), got) << run;
  auto other = backend::make_cuda_backend(0, DType::kF32);
  EXPECT_EQ(other->sum_squares_many(ts), got) << "a second backend";
  // One tensor alone: the same value as sum_squares up to rounding.
  const double one = be->sum_squares_many({&ts[6], 1});
  EXPECT_NEAR(one, be->sum_squares(ts[6]), 1e-12 * one);
  EXPECT_EQ(be->sum_squares_many({}), 0.0);
  EXPECT_EQ(be->sum_squares_many({&ts[4], 1}), 0.0);  // the empty tensor
  const Tensor on_host = random_f32({3}, 1);
  EXPECT_THROW(be->sum_squares_many({&on_host, 1}), Error);
}

TEST(CudaOptimizerMany, ModelOptimizerOnCudaEqualsTheCpuBitwise) {
  SKIP_WITHOUT_GPU();
  const std::string config =
      std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/train/llama_ce/init/config.json";
  auto cpu = backend::make_cpu_backend(1);
  auto be = backend::make_cuda_backend(0, DType::kF32);  // f32: compute == master, as the CPU
  train::AdamWOptions o;
  o.weight_decay = 0.1;
  const model::ModelConfig cfg = model::load_model_config(config);
  train::ParameterSet a = train::ParameterSet::random_init(cfg, 0.05, 3, *cpu);
  train::ParameterSet b = train::ParameterSet::random_init(cfg, 0.05, 3, *be);
  train::ModelOptimizer on_cpu(a, *cpu, o), on_gpu(b, *be, o);
  for (int round = 0; round < 2; ++round) {
    int64_t k = 0;
    for (std::size_t i = 0; i < a.params().size(); ++i) {
      Tensor g = Tensor::empty(DType::kF32, a.params()[i].shape);
      for (int64_t j = 0; j < g.numel(); ++j, ++k)
        g.mutable_data<float>()[j] = 0.01f * static_cast<float>((k * 7919 + round) % 201 - 100);
      a.params()[i].grad.copy_from(g);
      b.params()[i].grad.copy_from(g);
    }
    // max_norm 0: no clipping, so the update does not see the norm's rounding difference.
    const double norm_cpu = on_cpu.clip(0.0), norm_gpu = on_gpu.clip(0.0);
    EXPECT_NEAR(norm_gpu, norm_cpu, 1e-12 * norm_cpu);
    on_cpu.step(1e-2);
    on_gpu.step(1e-2);
    for (std::size_t i = 0; i < a.params().size(); ++i)
      ASSERT_TRUE(same_bytes(b.params()[i].master, a.params()[i].master))
          << "round " << round << " " << a.params()[i].name;
  }
}

}  // namespace
}  // namespace refinery
