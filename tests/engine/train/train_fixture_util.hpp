#pragma once
// The PyTorch/transformers training fixtures (tests/fixtures/train) as the C++ tests read them,
// and one fixture step run through TrainableModel, shared by the CPU and GPU training tests.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/teacher_source.hpp"
#include "engine/backend/backend.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/train/adamw.hpp"
#include "engine/train/lr_schedule.hpp"
#include "engine/train/trainable_model.hpp"

namespace refinery::train {

inline const std::string kRoot = std::string(REFINERY_SOURCE_DIR) + "/";

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

struct Fixture {
  nlohmann::json trajectory;
  nlohmann::json batches;  // [step][micro_batch][window][token]
  std::string init_dir;
  std::string dir;
};

inline Fixture load_fixture(const std::string& run) {
  Fixture f;
  f.dir = kRoot + "tests/fixtures/train/" + run + "/";
  f.trajectory = read_json(f.dir + "trajectory.json");
  f.batches = read_json(f.dir + "batches.json");
  f.init_dir = kRoot + f.trajectory["student_init"].get<std::string>();
  return f;
}

inline std::vector<int32_t> flat_tokens(const nlohmann::json& micro_batch) {
  std::vector<int32_t> out;
  for (const auto& window : micro_batch)
    for (const auto& id : window) out.push_back(id.get<int32_t>());
  return out;
}

inline backend::KdLossOptions loss_options(const nlohmann::json& t) {
  backend::KdLossOptions o;
  const auto& l = t["loss"];
  o.temperature = l["temperature"].get<double>();
  o.kd_weight = l["kd_weight"].get<double>();
  o.ce_weight = l["ce_weight"].get<double>();
  return o;
}

// Values of a tensor of a safetensors file as f32.
inline std::vector<float> file_values(const io::SafetensorsFile& f, const std::string& name) {
  const io::TensorEntry* e = f.find(name);
  EXPECT_NE(e, nullptr) << name;
  if (e == nullptr) return {};
  std::vector<float> v(static_cast<std::size_t>(e->num_elements()));
  convert_to_f32(e->dtype, f.bytes(*e).data(), v.data(), v.size());
  return v;
}

inline std::vector<float> tensor_values(backend::Backend& be, const Tensor& t) {
  const Tensor h = be.download(t);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

// max |a - b| / max |b| over a tensor (relative to its scale).
inline double scaled_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, scale = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::abs(static_cast<double>(want[i])));
  }
  return scale > 0.0 ? err / scale : err;
}

// ||got - want|| / ||want|| (L2 over the tensor): the bf16 bound, where single elements may be
// far off relative to the tensor's largest value while the gradient as a whole is right.
inline double relative_l2_error(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    err += d * d;
    norm += static_cast<double>(want[i]) * want[i];
  }
  return norm > 0.0 ? std::sqrt(err / norm) : std::sqrt(err);
}

// The fixture's optimizer and schedule (trajectory.json "hyper_parameters").
inline AdamWOptions fixture_adamw(const nlohmann::json& hp) {
  AdamWOptions o;
  o.beta1 = hp["beta1"].get<double>();
  o.beta2 = hp["beta2"].get<double>();
  o.eps = hp["eps"].get<double>();
  o.weight_decay = hp["weight_decay"].get<double>();
  return o;
}

inline LrSchedule fixture_schedule(const nlohmann::json& hp) {
  LrSchedule s;
  s.peak_lr = hp["peak_lr"].get<double>();
  s.warmup_steps = hp["warmup_steps"].get<int64_t>();
  s.total_steps = hp["total_steps"].get<int64_t>();
  s.min_lr_ratio = hp["min_lr_rate"].get<double>();
  return s;
}

// Forward + backward of every micro-batch of fixture step `step` (gradients accumulate).
inline LossSums run_fixture_step(const Fixture& f, int64_t step, TrainableModel& model,
                                 distill::OnlineTeacher* teacher) {
  const double positions =
      f.trajectory["steps"][static_cast<std::size_t>(step)]["positions"].get<double>();
  LossSums sums;
  for (const auto& mb : f.batches[static_cast<std::size_t>(step)]) {
    const std::vector<int32_t> tokens = flat_tokens(mb);
    TeacherTargets targets;
    if (teacher) targets = teacher->targets(tokens, static_cast<int64_t>(mb.size()), {});
    sums += model.forward_backward(tokens, static_cast<int64_t>(mb.size()), targets,
                                   loss_options(f.trajectory), 1.0 / positions);
  }
  return sums;
}

inline std::unique_ptr<distill::OnlineTeacher> fixture_teacher(
    const Fixture& f, std::shared_ptr<backend::Backend> be) {
  if (f.trajectory["teacher"].is_null()) return nullptr;
  return std::make_unique<distill::OnlineTeacher>(
      kRoot + f.trajectory["teacher"].get<std::string>(), std::move(be));
}

}  // namespace refinery::train
