// TrainableModel + ModelOptimizer against PyTorch/transformers (tests/fixtures/train, made by
// make_training_fixtures.py): the gradients of every parameter after the first step's backward,
// and the loss, gradient norm and parameters over 20 optimizer steps, for a dense llama trained
// on labels, the DeepSeek-V3 MoE fixture (MLA with q LoRA, sigmoid noaux_tc routing, shared
// expert) trained on labels, and the llama distilled online from the DeepSeek-V3 teacher.
#include <gtest/gtest.h>

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
    model.parameters().zero_grad(*be);
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

INSTANTIATE_TEST_SUITE_P(Runs, TrainFixture,
                         ::testing::Values("llama_ce", "deepseek_v3_ce", "llama_kd"));

}  // namespace
}  // namespace refinery::train
