// ModelOptimizer with the optimizer state sharded over ranks (ZeRO-1 code path, no NCCL): the
// ranks together do exactly what one unsharded optimizer does.
#include <gtest/gtest.h>

#include <cstring>

#include "engine/model/model_config.hpp"
#include "engine/train/optimizer.hpp"

namespace refinery::train {
namespace {

const std::string kConfig =
    std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/train/llama_ce/init/config.json";

// The same parameters and gradients every time (seeded init; gradients a function of the index).
ParameterSet make_params(backend::Backend& be) {
  ParameterSet p = ParameterSet::random_init(model::load_model_config(kConfig), 0.05, 7, be);
  int64_t k = 0;
  for (Parameter& q : p.params()) {
    float* g = q.grad.mutable_data<float>();
    for (int64_t i = 0; i < q.numel(); ++i, ++k) g[i] = 0.01f * static_cast<float>((k * 7919) % 201 - 100);
  }
  return p;
}

TEST(OptimizerShard, OwnersCoverEveryParameterAndBalanceSizes) {
  auto be = backend::make_cpu_backend(1);
  const ParameterSet p = make_params(*be);
  for (int world : {1, 2, 3}) {
    const std::vector<int> owner = ModelOptimizer::owners(p, world);
    ASSERT_EQ(owner.size(), p.params().size());
    std::vector<int64_t> load(static_cast<std::size_t>(world), 0);
    for (std::size_t i = 0; i < owner.size(); ++i) {
      ASSERT_GE(owner[i], 0);
      ASSERT_LT(owner[i], world);
      load[static_cast<std::size_t>(owner[i])] += p.params()[i].numel();
    }
    int64_t largest = 0;
    for (const auto& q : p.params()) largest = std::max(largest, q.numel());
    for (int64_t l : load) EXPECT_LE(*std::max_element(load.begin(), load.end()) - l, largest);
  }
}

TEST(OptimizerShard, TwoRanksEqualOneOptimizer) {
  auto be = backend::make_cpu_backend(1);
  AdamWOptions o;
  o.weight_decay = 0.1;
  // One rank.
  ParameterSet whole = make_params(*be);
  ModelOptimizer single(whole, *be, o);
  const double norm = single.clip(1.0);
  single.step(1e-2);
  // Two ranks over one copy: each updates the parameters it owns; the norm's partial sums are
  // added by the all-reduce callback.
  ParameterSet shared = make_params(*be);
  std::vector<double> partials;
  auto reduce = [&](double partial) {
    partials.push_back(partial);
    return norm * norm;  // what an all-reduce over both ranks returns
  };
  ModelOptimizer rank0(shared, *be, o, {0, 2, reduce});
  ModelOptimizer rank1(shared, *be, o, {1, 2, reduce});
  EXPECT_DOUBLE_EQ(rank0.clip(1.0), norm);
  EXPECT_DOUBLE_EQ(rank1.clip(1.0), norm);
  ASSERT_EQ(partials.size(), 2u);
  EXPECT_NEAR(partials[0] + partials[1], norm * norm, 1e-9 * norm * norm);
  EXPECT_GT(partials[0], 0.0);
  EXPECT_GT(partials[1], 0.0);
  rank0.step(1e-2);
  rank1.step(1e-2);
  for (std::size_t i = 0; i < whole.params().size(); ++i) {
    const Parameter& a = whole.params()[i];
    const Parameter& b = shared.params()[i];
    EXPECT_EQ(std::memcmp(a.master.data(), b.master.data(), a.master.nbytes()), 0) << a.name;
  }
}

}  // namespace
}  // namespace refinery::train
