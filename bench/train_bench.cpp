// train_bench CONFIG.json [--teacher MODEL] [--device cuda|cpu] [--batch B] [--seq L] [--steps N]
//             [--warmup W] [--no-recompute] [--temperature T] [--overlap-teacher]
//
// Training throughput of the engine on random token ids (uniform over the vocabulary, seed 0), the
// quantities issue 5 compares with ../shared/peers/hf_peer.py:
//   without --teacher: a student from CONFIG (random init) trained on labels (CE), like the peer's
//                      `train` (model(ids, labels=ids).loss, AdamW);
//   with --teacher:    online KD from the teacher (its forward in the same process, forward KL at
//                      temperature T, times T², no CE), like the peer's `kd`; with
//                      --overlap-teacher the teacher runs on its own backend and thread, the next
//                      step's forward overlapping this step (distill/prefetching_teacher.hpp).
// Every step is a whole optimizer step: zero grads, forward + backward of one B x L micro-batch,
// global-norm clipping, AdamW. Prints one JSON line: tokens/s (mean over the steps after W
// warm-up steps), MFU against 989 TFLOP/s counting 6 x student parameters per token (the peer's
// formula, which ignores attention and recomputation), and the caching pool's peak memory.
#include <chrono>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distill/prefetching_teacher.hpp"
#include "distill/teacher_source.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/core/device_memory.hpp"
#include "engine/core/error.hpp"
#include "engine/model/model_config.hpp"
#include "engine/train/optimizer.hpp"
#include "engine/train/trainable_model.hpp"

namespace {

using namespace refinery;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string config, teacher, device = "cuda";
  int64_t batch = 4, seq = 2048, steps = 6, warmup = 2;
  bool recompute = true;
  bool overlap_teacher = false;  // PrefetchingTeacher: the next batch's teacher forward overlaps
  double temperature = 2.0;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw_user_error(a, " needs a value");
      return argv[++i];
    };
    if (a == "--teacher") o.teacher = value();
    else if (a == "--device") o.device = value();
    else if (a == "--batch") o.batch = std::stoll(value());
    else if (a == "--seq") o.seq = std::stoll(value());
    else if (a == "--steps") o.steps = std::stoll(value());
    else if (a == "--warmup") o.warmup = std::stoll(value());
    else if (a == "--temperature") o.temperature = std::stod(value());
    else if (a == "--no-recompute") o.recompute = false;
    else if (a == "--overlap-teacher") o.overlap_teacher = true;
    else if (o.config.empty() && a[0] != '-') o.config = a;
    else throw_user_error("train_bench: unknown argument ", a);
  }
  if (o.config.empty()) throw_user_error("usage: train_bench CONFIG.json [--teacher MODEL] ...");
  if (o.steps <= o.warmup) throw_user_error("--steps must exceed --warmup");
  return o;
}

int run(const Options& o) {
  auto be = o.device == "cuda" ? backend::make_cuda_backend(0) : backend::make_cpu_backend();
  const model::ModelConfig config = model::load_model_config(o.config);
  train::ParameterSet params = train::ParameterSet::random_init(config, 0.02, 0, *be);
  const int64_t n_params = params.total_numel();
  train::TrainableModelOptions mo;
  mo.recompute = o.recompute;
  train::TrainableModel student(config, std::move(params), be, mo);
  train::ModelOptimizer optimizer(student.parameters(), *be, train::AdamWOptions{});
  std::unique_ptr<distill::TeacherSource> teacher;
  if (!o.teacher.empty() && o.overlap_teacher)
    teacher = std::make_unique<distill::PrefetchingTeacher>(
        o.teacher, o.device == "cuda" ? backend::make_cuda_backend(0) : backend::make_cpu_backend());
  else if (!o.teacher.empty())
    teacher = std::make_unique<distill::OnlineTeacher>(o.teacher, be);

  backend::KdLossOptions loss;
  if (teacher) {
    loss.temperature = o.temperature;
  } else {
    loss.kd_weight = 0.0;
    loss.ce_weight = 1.0;
  }
  std::mt19937_64 rng(0);
  std::uniform_int_distribution<int32_t> id(0, config.vocab_size - 1);
  const int64_t t = o.batch * o.seq;
  const double scale = 1.0 / static_cast<double>(train::TrainableModel::counted_positions(t, o.batch));
  double timed = 0.0, last_loss = 0.0;
  if (o.device == "cuda") device_reset_peak_bytes();
  std::vector<std::vector<int32_t>> batches(static_cast<std::size_t>(o.steps));
  for (auto& tokens : batches) {
    tokens.resize(static_cast<std::size_t>(t));
    for (auto& x : tokens) x = id(rng);
  }
  for (int64_t step = 0; step < o.steps; ++step) {
    const std::vector<int32_t>& tokens = batches[static_cast<std::size_t>(step)];
    const auto t0 = Clock::now();
    student.parameters().defer_zero_grad(*be);  // as the Trainer
    train::TeacherTargets targets;
    if (teacher) {
      targets = teacher->targets(tokens, o.batch, {});
      if (step + 1 < o.steps) teacher->prefetch(batches[static_cast<std::size_t>(step + 1)], o.batch);
    }
    const train::LossSums sums = student.forward_backward(tokens, o.batch, targets, loss, scale);
    optimizer.clip(1.0);
    optimizer.step(1e-4);
    be->download(student.parameters().params().back().master.slice(0, 1));  // synchronize
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    last_loss = (loss.kd_weight * o.temperature * o.temperature * sums.kd + loss.ce_weight * sums.ce) /
                static_cast<double>(sums.positions);
    std::cerr << "step " << step << ": " << seconds << " s, loss " << last_loss << "\n";
    if (step >= o.warmup) timed += seconds;
    if (step + 1 == o.warmup) be->profile_reset();  // REFINERY_PROFILE=1 covers the timed steps
  }
  const double tok_s = static_cast<double>(t * (o.steps - o.warmup)) / timed;
  nlohmann::json j = {{"mode", teacher ? "kd" : "train"},
                      {"config", o.config},
                      {"teacher", o.teacher},
                      {"device", be->name()},
                      {"batch", o.batch},
                      {"seq", o.seq},
                      {"recompute", o.recompute},
                      {"overlap_teacher", o.overlap_teacher},
                      {"params", n_params},
                      {"tok_s", tok_s},
                      {"mfu_vs_989", 6.0 * static_cast<double>(n_params) * tok_s / 989e12},
                      {"peak_gb", o.device == "cuda" ? device_peak_bytes() / 1e9 : 0.0},
                      {"last_loss", last_loss}};
  std::cout << j.dump() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const Error& e) {
    std::cerr << "train_bench: " << e.what() << "\n";
    return e.kind() == ErrorKind::kUser ? 1 : 2;
  }
}
