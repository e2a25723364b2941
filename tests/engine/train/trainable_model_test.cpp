// TrainableModel + ModelOptimizer against PyTorch/transformers (tests/fixtures/train, made by
// make_training_fixtures.py): the gradients of every parameter after the first step's backward,
// and the loss, gradient norm and parameters over 20 optimizer steps, for a dense llama trained
// on labels, the DeepSeek-V3 MoE fixture (MLA with q LoRA, sigmoid noaux_tc routing, shared
// expert) trained on labels, and the llama distilled online from the DeepSeek-V3 teacher.
#include <gtest/gtest.h>

#include <algorithm>

#include "engine/model/model_config.hpp"
#include "engine/train/lr_schedule.hpp"
#include "engine/train/optimizer.hpp"
#include "tests/engine/train/train_fixture_util.hpp"

namespace refinery::train {
namespace {

class TrainFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainFixture, FirstStepGradientsEqualTorch) {
  const Fixture f = load_fixture(GetParam());
  auto be = backend::make_cpu_backend();
  const model::ModelConfig config = model::load_model_config(f.init_dir);
  TrainableModel model(config, ParameterSet::load(f.init_dir, config, *be), be);
  auto teacher = fixture_teacher(f, be);
  const auto& step0 = f.trajectory["steps"][0];
  const double positions = step0["positions"].get<double>();
  const LossSums sums = run_fixture_step(f, 0, model, teacher.get());
  EXPECT_EQ(sums.positions, static_cast<int64_t>(positions));
  EXPECT_NEAR(sums.ce / positions, step0["ce"].get<double>(), 1e-5 * step0["ce"].get<double>());
  EXPECT_NEAR(sums.kd / positions, step0["kd"].get<double>(),
              1e-6 + 1e-4 * step0["kd"].get<double>());

  const auto grads = io::SafetensorsFile::open(f.dir + "grads_step0.safetensors");
  int checked = 0;
  for (Parameter& p : model.parameters().params()) {
    if (!p.trainable) continue;
    EXPECT_LT(scaled_error(tensor_values(*be, p.grad), file_values(grads, p.name)), 1e-4) << p.name;
    ++checked;
  }
  EXPECT_EQ(checked, f.trajectory["parameters_trained"].get<int>());
}

TEST_P(TrainFixture, TwentyStepsMatchTorch) {
  const Fixture f = load_fixture(GetParam());
  auto be = backend::make_cpu_backend();
  const model::ModelConfig config = model::load_model_config(f.init_dir);
  TrainableModel model(config, ParameterSet::load(f.init_dir, config, *be), be);
  auto teacher = fixture_teacher(f, be);
  const auto& hp = f.trajectory["hyper_parameters"];
  const AdamWOptions adamw = fixture_adamw(hp);
  ModelOptimizer optimizer(model.parameters(), *be, adamw);
  const LrSchedule schedule = fixture_schedule(hp);
  const backend::KdLossOptions loss = loss_options(f.trajectory);
  const double t2 = loss.temperature * loss.temperature;

  for (int64_t step = 0; step < hp["steps"].get<int64_t>(); ++step) {
    const auto& want = f.trajectory["steps"][static_cast<std::size_t>(step)];
    const double positions = want["positions"].get<double>();
    // Deferred zeroing, as the Trainer does: from step 1 on, the linear weights' gradients are
    // overwritten by their first write instead of being zeroed and added to.
    model.parameters().defer_zero_grad(*be);
    const LossSums sums = run_fixture_step(f, step, model, teacher.get());
    const double got_loss = (loss.kd_weight * t2 * sums.kd + loss.ce_weight * sums.ce) / positions;
    const double want_loss = want["loss"].get<double>();
    EXPECT_NEAR(got_loss, want_loss, 1e-3 * std::abs(want_loss)) << "step " << step;
    const double norm = optimizer.clip(hp["max_grad_norm"].get<double>());
    EXPECT_NEAR(norm, want["grad_norm"].get<double>(), 1e-3 * want["grad_norm"].get<double>())
        << "step " << step;
    const double lr = schedule.lr(step);
    EXPECT_NEAR(lr, want["lr"].get<double>(), 1e-12) << "step " << step;
    optimizer.step(lr);
  }
  const auto params = io::SafetensorsFile::open(f.dir + "params_step20.safetensors");
  for (Parameter& p : model.parameters().params())
    EXPECT_LT(scaled_error(tensor_values(*be, p.master), file_values(params, p.name)), 1e-3)
        << p.name;
}

// The deferred-zeroing protocol of ParameterSet (defer_zero_grad / claim_grad / finish_pending).
TEST(ParameterSetDeferredZero, ClaimsOverwriteOnlyPendingWholeGradients) {
  const Fixture f = load_fixture("llama_ce");
  auto be = backend::make_cpu_backend();
  const model::ModelConfig config = model::load_model_config(f.init_dir);
  ParameterSet set = ParameterSet::load(f.init_dir, config, *be);
  ASSERT_GE(set.params().size(), 2u);
  Parameter& a = set.params()[0];
  Parameter& b = set.params()[1];
  const auto all_equal = [&](const Tensor& t, float want) {
    const std::vector<float> v = tensor_values(*be, t);
    return std::all_of(v.begin(), v.end(), [&](float x) { return x == want; });
  };
  const auto fill = [](Tensor& t, float value) {  // CPU backend: the gradients are host tensors
    std::fill(t.mutable_data<float>(), t.mutable_data<float>() + t.numel(), value);
  };
  using backend::GradWrite;
  // Never claimed: nothing is pending, a claim adds (and makes `a` claimable from now on).
  EXPECT_EQ(set.claim_grad(a.grad), GradWrite::kAdd);
  EXPECT_EQ(set.claim_grad(Tensor()), GradWrite::kAdd);
  // defer_zero_grad leaves the claimable gradient untouched (pending) and zeroes the other.
  fill(a.grad, 5.0f);
  fill(b.grad, 5.0f);
  set.defer_zero_grad(*be);
  EXPECT_TRUE(all_equal(a.grad, 5.0f));
  EXPECT_TRUE(all_equal(b.grad, 0.0f));
  // A part of a pending gradient is not claimed (it adds); the whole one is, once.
  if (a.grad.size(0) > 1) EXPECT_EQ(set.claim_grad(a.grad.slice(0, 1)), GradWrite::kAdd);
  EXPECT_EQ(set.claim_grad(a.grad), GradWrite::kOverwrite);
  EXPECT_EQ(set.claim_grad(a.grad), GradWrite::kAdd);
  // What no op claimed is zeroed by finish_pending; zero_grad clears pending states.
  set.defer_zero_grad(*be);
  EXPECT_TRUE(all_equal(a.grad, 5.0f));
  set.finish_pending(*be);
  EXPECT_TRUE(all_equal(a.grad, 0.0f));
  set.defer_zero_grad(*be);
  set.zero_grad(*be);
  EXPECT_EQ(set.claim_grad(a.grad), GradWrite::kAdd);
}

INSTANTIATE_TEST_SUITE_P(Runs, TrainFixture,
                         ::testing::Values("llama_ce", "deepseek_v3_ce", "llama_kd"));

}  // namespace
}  // namespace refinery::train
