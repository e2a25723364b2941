// ModelOptimizer on the multi-tensor ops (Backend::sum_squares_many, adamw_update_many) against
// the per-tensor loop it used before (written out here: sum_squares per gradient in parameter
// order, adamw_update per parameter with its decay flag). On the CPU both must agree bit for bit
// (the norm with EXPECT_EQ, every master weight by memcmp), so training trajectories and resumed
// runs are unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "engine/model/model_config.hpp"
#include "engine/train/optimizer.hpp"

namespace refinery::train {
namespace {

const std::string kConfig =
    std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/train/llama_ce/init/config.json";

// Seeded parameters, gradients a function of the index and of `round`.
ParameterSet make_params(backend::Backend& be) {
  return ParameterSet::random_init(model::load_model_config(kConfig), 0.05, 11, be);
}
void fill_grads(ParameterSet& p, int round) {
  int64_t k = 0;
  for (Parameter& q : p.params()) {
    float* g = q.grad.mutable_data<float>();
    for (int64_t i = 0; i < q.numel(); ++i, ++k)
      g[i] = 0.01f * static_cast<float>((k * 7919 + round * 104729) % 201 - 100);
  }
}

// The per-tensor optimizer ModelOptimizer was before the multi-tensor ops (unsharded).
struct LoopOptimizer {
  ParameterSet& params;
  backend::Backend& be;
  AdamWOptions o;
  std::vector<Tensor> m, v;
  int64_t steps = 0;
  double coefficient = 1.0;

  LoopOptimizer(ParameterSet& p, backend::Backend& b, AdamWOptions options)
      : params(p), be(b), o(options) {
    for (const Parameter& q : p.params()) {
      m.push_back(Tensor::zeros(DType::kF32, {q.numel()}));
      v.push_back(Tensor::zeros(DType::kF32, {q.numel()}));
    }
  }
  double clip(double max_norm) {
    double sum = 0.0;
    for (const Parameter& q : params.params())
      if (q.trainable) sum += be.sum_squares(q.grad);
    const double norm = std::sqrt(sum);
    coefficient = std::min(1.0, max_norm / (norm + 1e-6));
    return norm;
  }
  void step(double lr) {
    ++steps;
    const double t = static_cast<double>(steps);
    const double bc1 = 1.0 - std::pow(o.beta1, t), bc2 = 1.0 - std::pow(o.beta2, t);
    for (std::size_t i = 0; i < params.params().size(); ++i) {
      Parameter& q = params.params()[i];
      if (!q.trainable) continue;
      backend::AdamWScalars s;
      s.decay = q.decay && o.weight_decay != 0.0;
      s.decay_factor = static_cast<float>(1.0 - lr * o.weight_decay);
      s.lerp_weight = static_cast<float>(1.0 - o.beta1);
      s.beta2 = static_cast<float>(o.beta2);
      s.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
      s.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
      s.eps = static_cast<float>(o.eps);
      s.neg_step_size = static_cast<float>(-(lr / bc1));
      s.grad_scale = static_cast<float>(coefficient);
      const int64_t n = q.numel();
      Tensor master = q.master.view({n}), compute;
      if (q.compute.data() != q.master.data()) compute = q.compute.view({n});
      be.adamw_update(master, q.grad.view({n}), m[i], v[i], s, compute);
    }
    coefficient = 1.0;
  }
};

TEST(ModelOptimizerMany, CpuEqualsThePerTensorLoopBitwise) {
  auto be = backend::make_cpu_backend(2);
  AdamWOptions o;
  o.weight_decay = 0.1;  // decayed matrices and undecayed norms in one call
  ParameterSet a = make_params(*be), b = make_params(*be);
  int decayed = 0, undecayed = 0;
  for (const Parameter& q : a.params()) (q.decay ? decayed : undecayed)++;
  ASSERT_GT(decayed, 0);
  ASSERT_GT(undecayed, 0);
  ModelOptimizer many(a, *be, o);
  LoopOptimizer loop(b, *be, o);
  for (int round = 0; round < 3; ++round) {
    fill_grads(a, round);
    fill_grads(b, round);
    const double max_norm = round == 1 ? 1e9 : 0.5;  // round 1: no clipping
    const double norm = many.clip(max_norm);
    EXPECT_EQ(norm, loop.clip(max_norm)) << round;
    EXPECT_GT(norm, 0.0);
    many.step(1e-2);
    loop.step(1e-2);
    for (std::size_t i = 0; i < a.params().size(); ++i) {
      const Parameter &p = a.params()[i], &q = b.params()[i];
      ASSERT_EQ(std::memcmp(p.master.data(), q.master.data(), p.master.nbytes()), 0)
          << "round " << round << " " << p.name;
    }
  }
}

}  // namespace
}  // namespace refinery::train
