// TrainableModel on the GPU: the step-0 gradients of the training fixtures on the CUDA backend
// against the CPU backend (f32 activations: the same math, so tight bounds) and, with bf16
// activations (what training runs), against PyTorch's f32 gradients within 5% (relative L2 per
// tensor); and
// the bf16 loss over 20 steps against PyTorch's trajectory.
#include <gtest/gtest.h>

#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/model/model_config.hpp"
#include "engine/train/lr_schedule.hpp"
#include "engine/train/optimizer.hpp"
#include "tests/engine/train/train_fixture_util.hpp"

namespace refinery::train {
namespace {

class TrainFixtureGpu : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  }
};

TEST_P(TrainFixtureGpu, F32GradientsEqualCpu) {
  const Fixture f = load_fixture(GetParam());
  const model::ModelConfig config = model::load_model_config(f.init_dir);
  auto cpu = backend::make_cpu_backend();
  auto gpu = backend::make_cuda_backend(0, DType::kF32);
  TrainableModel on_cpu(config, ParameterSet::load(f.init_dir, config, *cpu), cpu);
  TrainableModel on_gpu(config, ParameterSet::load(f.init_dir, config, *gpu), gpu);
  auto teacher_cpu = fixture_teacher(f, cpu);
  auto teacher_gpu = fixture_teacher(f, gpu);
  const LossSums a = run_fixture_step(f, 0, on_cpu, teacher_cpu.get());
  const LossSums b = run_fixture_step(f, 0, on_gpu, teacher_gpu.get());
  EXPECT_NEAR(b.ce, a.ce, 1e-4 * a.ce);
  EXPECT_NEAR(b.kd, a.kd, 1e-6 + 1e-4 * a.kd);
  auto& pc = on_cpu.parameters().params();
  auto& pg = on_gpu.parameters().params();
  for (std::size_t i = 0; i < pc.size(); ++i)
    EXPECT_LT(scaled_error(tensor_values(*gpu, pg[i].grad), tensor_values(*cpu, pc[i].grad)), 1e-4)
        << pc[i].name;
}

TEST_P(TrainFixtureGpu, Bf16TrainingFollowsTorch) {
  const Fixture f = load_fixture(GetParam());
  const model::ModelConfig config = model::load_model_config(f.init_dir);
  auto gpu = backend::make_cuda_backend(0, DType::kBF16);
  TrainableModel model(config, ParameterSet::load(f.init_dir, config, *gpu), gpu);
  auto teacher = fixture_teacher(f, gpu);
  const auto& hp = f.trajectory["hyper_parameters"];
  const AdamWOptions adamw = fixture_adamw(hp);
  ModelOptimizer optimizer(model.parameters(), *gpu, adamw);
  const LrSchedule schedule = fixture_schedule(hp);
  const backend::KdLossOptions loss = loss_options(f.trajectory);
  const double t2 = loss.temperature * loss.temperature;
  const auto grads = io::SafetensorsFile::open(f.dir + "grads_step0.safetensors");
  for (int64_t step = 0; step < hp["steps"].get<int64_t>(); ++step) {
    const auto& want = f.trajectory["steps"][static_cast<std::size_t>(step)];
    const double positions = want["positions"].get<double>();
    model.parameters().zero_grad(*gpu);
    const LossSums sums = run_fixture_step(f, step, model, teacher.get());
    const double got = (loss.kd_weight * t2 * sums.kd + loss.ce_weight * sums.ce) / positions;
    // bf16 activations: ~3 significant digits per op; the loss stays within 2%.
    EXPECT_NEAR(got, want["loss"].get<double>(), 2e-2 * want["loss"].get<double>()) << step;
    if (step == 0) {
      // Dense fixtures: every tensor within 5% (relative L2; measured on the H100: <= 5%). The MoE
      // fixture's router margins are ~1e-4 (random init), so bf16 rounding flips some tokens'
      // experts and the gradients of those experts (and downstream) differ by up to 45% per
      // tensor (measured): there the check is over all parameters at once.
      const bool moe = config.is_moe();
      std::vector<float> all_got, all_want;
      for (Parameter& p : model.parameters().params()) {
        if (!p.trainable) continue;
        const std::vector<float> got = tensor_values(*gpu, p.grad), want = file_values(grads, p.name);
        if (!moe) {
          EXPECT_LT(relative_l2_error(got, want), 0.05) << p.name;
        }
        all_got.insert(all_got.end(), got.begin(), got.end());
        all_want.insert(all_want.end(), want.begin(), want.end());
      }
      EXPECT_LT(relative_l2_error(all_got, all_want), moe ? 0.1 : 0.05);
    }
    optimizer.clip(hp["max_grad_norm"].get<double>());
    optimizer.step(schedule.lr(step));
  }
}

INSTANTIATE_TEST_SUITE_P(Runs, TrainFixtureGpu,
                         ::testing::Values("llama_ce", "deepseek_v3_ce", "llama_kd"));

}  // namespace
}  // namespace refinery::train
