// TrainableModel + ModelOptimizer against PyTorch/transformers (tests/fixtures/train, made by
// make_training_fixtures.py): the gradients of every parameter after the first step's backward,
// and the loss, gradient norm and parameters over 20 optimizer steps, for a dense llama trained
// on labels, the DeepSeek-V3 MoE fixture (MLA with q LoRA, sigmoid noaux_tc routing, shared
// expert) trained on labels, and the llama distilled online from the DeepSeek-V3 teacher.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "distill/teacher_source.hpp"
#include "engine/backend/backend.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/model/model_config.hpp"
#include "engine/train/lr_schedule.hpp"
#include "engine/train/optimizer.hpp"
#include "engine/train/trainable_model.hpp"

namespace refinery::train {
namespace {

const std::string kRoot = std::string(REFINERY_SOURCE_DIR) + "/";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

struct Fixture {
  nlohmann::json trajectory;
  nlohmann::json batches;  // [step][micro_batch][window][token]
  std::string init_dir;
  std::string dir;
};

Fixture load_fixture(const std::string& run) {
  Fixture f;
  f.dir = kRoot + "tests/fixtures/train/" + run + "/";
  f.trajectory = read_json(f.dir + "trajectory.json");
  f.batches = read_json(f.dir + "batches.json");
  f.init_dir = kRoot + f.trajectory["student_init"].get<std::string>();
  return f;
}

std::vector<int32_t> flat_tokens(const nlohmann::json& micro_batch) {
  std::vector<int32_t> out;
  for (const auto& window : micro_batch)
    for (const auto& id : window) out.push_back(id.get<int32_t>());
  return out;
}

backend::KdLossOptions loss_options(const nlohmann::json& t) {
  backend::KdLossOptions o;
  const auto& l = t["loss"];
  o.temperature = l["temperature"].get<double>();
  o.kd_weight = l["kd_weight"].get<double>();
  o.ce_weight = l["ce_weight"].get<double>();
  return o;
}

// Values of a tensor of a safetensors file as f32.
std::vector<float> file_values(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorEntry* e = f.find(name);
  EXPECT_NE(e, nullptr) << name;
  if (e == nullptr) return {};
  std::vector<float> v(static_cast<std::size_t>(e->num_elements()));
  convert_to_f32(e->dtype, f.bytes(*e).data(), v.data(), v.size());
  return v;
}

std::vector<float> tensor_values(backend::Backend& be, const Tensor& t) {
  const Tensor h = be.download(t);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

// max |a - b| / max |b| over a tensor (relative to its scale).
double scaled_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::abs(static_cast<double>(want[i])));
  }
  return scale > 0.0 ? err / scale : err;
}

class TrainFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainFixture, FirstStepGradientsEqualTorch) {
  const Fixture f = load_fixture(GetParam());
  auto be = backend::make_cpu_backend();
  const model::ModelConfig config = model::load_model_config(f.init_dir);
  TrainableModel model(config, ParameterSet::load(f.init_dir, config, *be), be);
  std::unique_ptr<distill::OnlineTeacher> teacher;
  if (!f.trajectory["teacher"].is_null())
    teacher = std::make_unique<distill::OnlineTeacher>(
        kRoot + f.trajectory["teacher"].get<std::string>(), be);

  const backend::KdLossOptions loss = loss_options(f.trajectory);
  const auto& step0 = f.trajectory["steps"][0];
  const double positions = step0["positions"].get<double>();
  LossSums sums;
  for (const auto& mb : f.batches[0]) {
    const std::vector<int32_t> tokens = flat_tokens(mb);
    TeacherTargets targets;
    if (teacher) targets = teacher->targets(tokens, static_cast<int64_t>(mb.size()), {});
    sums += model.forward_backward(tokens, static_cast<int64_t>(mb.size()), targets, loss,
                                   1.0 / positions);
  }
  EXPECT_EQ(sums.positions, static_cast<int64_t>(positions));
  EXPECT_NEAR(sums.ce / positions, step0["ce"].get<double>(), 1e-5 * step0["ce"].get<double>());
  EXPECT_NEAR(sums.kd / positions, step0["kd"].get<double>(), 1e-5 + 1e-4 * step0["kd"].get<double>());

  const auto grads = io::SafetensorsFile::open(f.dir + "grads_step0.safetensors");
  int checked = 0;
  for (Parameter& p : model.parameters().params()) {
    if (!p.trainable) continue;
    const double err = scaled_error(tensor_values(*be, p.grad), file_values(grads, p.name));
    EXPECT_LT(err, 1e-4) << p.name;
    ++checked;
  }
  EXPECT_EQ(checked, f.trajectory["parameters_trained"].get<int>());
}

TEST_P(TrainFixture, TwentyStepsMatchTorch) {
  const Fixture f = load_fixture(GetParam());
  auto be = backend::make_cpu_backend();
  const model::ModelConfig config = model::load_model_config(f.init_dir);
  TrainableModel model(config, ParameterSet::load(f.init_dir, config, *be), be);
  std::unique_ptr<distill::OnlineTeacher> teacher;
  if (!f.trajectory["teacher"].is_null())
    teacher = std::make_unique<distill::OnlineTeacher>(
        kRoot + f.trajectory["teacher"].get<std::string>(), be);
  const auto& hp = f.trajectory["hyper_parameters"];
  AdamWOptions adamw;
  adamw.beta1 = hp["beta1"].get<double>();
  adamw.beta2 = hp["beta2"].get<double>();
  adamw.eps = hp["eps"].get<double>();
  adamw.weight_decay = hp["weight_decay"].get<double>();
  ModelOptimizer optimizer(model.parameters(), *be, adamw);
  LrSchedule schedule;
  schedule.peak_lr = hp["peak_lr"].get<double>();
  schedule.warmup_steps = hp["warmup_steps"].get<int64_t>();
  schedule.total_steps = hp["total_steps"].get<int64_t>();
  schedule.min_lr_ratio = hp["min_lr_rate"].get<double>();
  const backend::KdLossOptions loss = loss_options(f.trajectory);
  const double t2 = loss.temperature * loss.temperature;

  for (int64_t step = 0; step < hp["steps"].get<int64_t>(); ++step) {
    const auto& want = f.trajectory["steps"][static_cast<std::size_t>(step)];
    const double positions = want["positions"].get<double>();
    model.parameters().zero_grad(*be);
    LossSums sums;
    for (const auto& mb : f.batches[static_cast<std::size_t>(step)]) {
      const std::vector<int32_t> tokens = flat_tokens(mb);
      TeacherTargets targets;
      if (teacher) targets = teacher->targets(tokens, static_cast<int64_t>(mb.size()), {});
      sums += model.forward_backward(tokens, static_cast<int64_t>(mb.size()), targets, loss,
                                     1.0 / positions);
    }
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
