// The optimizer pieces against PyTorch/transformers references frozen by
// tests/fixtures/train/make_optimizer_fixtures.py: the cosine schedule (transformers), the global-norm
// clip (torch.nn.utils.clip_grad_norm_) and a 20-step AdamW trajectory (torch.optim.AdamW, fp32).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"
#include "engine/io/safetensors_writer.hpp"
#include "engine/train/adamw.hpp"
#include "engine/train/grad_clip.hpp"
#include "engine/train/lr_schedule.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::train {
namespace {

using refinery::test::error_message_of;
using refinery::test::ScratchDir;
using ::testing::AllOf;
using ::testing::HasSubstr;

const nlohmann::json& reference() {
  static const nlohmann::json json = [] {
    std::ifstream in(std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/train/optimizer_reference.json");
    if (!in) throw std::runtime_error("missing tests/fixtures/train/optimizer_reference.json");
    return nlohmann::json::parse(in);
  }();
  return json;
}

// The training fixture: parameters, gradients and the schedule, decoded from the JSON integers.
struct Problem {
  std::vector<std::string> names;
  std::vector<std::vector<float>> init;                // [param][numel]
  std::vector<std::vector<std::vector<float>>> grads;  // [step][param][numel]
  LrSchedule schedule;
  AdamWOptions options;
  double max_norm = 0.0;
};

Problem load_problem() {
  const auto& t = reference()["training"];
  Problem p;
  p.names = t["names"].get<std::vector<std::string>>();
  const float init_scale = std::ldexp(1.0f, t["init_scale_log2"].get<int>());
  const float grad_scale = std::ldexp(1.0f, t["grad_scale_log2"].get<int>());
  for (const auto& ints : t["init_int"]) {
    std::vector<float> v;
    for (const auto& k : ints) v.push_back(static_cast<float>(k.get<int64_t>()) * init_scale);
    p.init.push_back(v);
  }
  for (const auto& step : t["grad_int"]) {
    std::vector<std::vector<float>> per_param;
    for (const auto& ints : step) {
      std::vector<float> v;
      for (const auto& k : ints) v.push_back(static_cast<float>(k.get<int64_t>()) * grad_scale);
      per_param.push_back(v);
    }
    p.grads.push_back(per_param);
  }
  p.schedule = {t["lr_peak"].get<double>(), t["warmup_steps"].get<int64_t>(), t["total_steps"].get<int64_t>(), 0.0};
  p.options = {t["beta1"].get<double>(), t["beta2"].get<double>(), t["eps"].get<double>(),
               t["weight_decay"].get<double>()};
  p.max_norm = t["max_grad_norm"].get<double>();
  return p;
}

AdamW make_optimizer(const Problem& p) {
  AdamW opt(p.options);
  for (std::size_t i = 0; i < p.names.size(); ++i) {
    const std::size_t k = opt.add_parameter(p.names[i], static_cast<int64_t>(p.init[i].size()));
    std::copy(p.init[i].begin(), p.init[i].end(), opt.master(k).begin());
  }
  return opt;
}

// One training step as the trainer will run it: clip the (copied) gradients, then update with the
// scheduled lr for the steps already taken. Returns the pre-clip norm.
double train_step(AdamW& opt, const Problem& p, std::size_t t) {
  auto grads = p.grads[t];
  std::vector<std::pair<float*, int64_t>> views;
  std::vector<const float*> pointers;
  for (auto& g : grads) {
    views.emplace_back(g.data(), static_cast<int64_t>(g.size()));
    pointers.push_back(g.data());
  }
  const double norm = clip_grad_norm(views, p.max_norm);
  opt.step(p.schedule.lr(opt.step_count()), pointers);
  return norm;
}

double l2(std::span<const float> v) {
  double s = 0.0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// ---------------------------------------------------------------------------------------------------
TEST(LrSchedule, MatchesTransformersCosineWithWarmup) {
  int checked = 0;
  for (const auto& s : reference()["schedules"]) {
    const LrSchedule schedule{s["peak_lr"].get<double>(), s["warmup_steps"].get<int64_t>(),
                              s["total_steps"].get<int64_t>(), s["min_lr_ratio"].get<double>()};
    const auto lrs = s["lr"].get<std::vector<double>>();
    ASSERT_EQ(static_cast<int64_t>(lrs.size()), schedule.total_steps + 1);
    for (std::size_t step = 0; step < lrs.size(); ++step) {
      EXPECT_NEAR(schedule.lr(static_cast<int64_t>(step)), lrs[step], 1e-12 * lrs[step])
          << "warmup " << schedule.warmup_steps << " total " << schedule.total_steps << " min ratio "
          << schedule.min_lr_ratio << " step " << step;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 101 + 38 + 6 + 101 + 51);
}

TEST(LrSchedule, WarmupStartsAtZeroPeaksThenHoldsTheFloorPastTheEnd) {
  const LrSchedule s{1e-3, 4, 20, 0.1};
  EXPECT_EQ(s.lr(0), 0.0);
  EXPECT_DOUBLE_EQ(s.lr(1), 0.25e-3);
  EXPECT_DOUBLE_EQ(s.lr(4), 1e-3);
  EXPECT_DOUBLE_EQ(s.lr(12), 0.55e-3);  // halfway down the cosine: 0.5 * 0.9 + 0.1
  EXPECT_DOUBLE_EQ(s.lr(20), 1e-4);
  // transformers' cosine would climb again here; ours stays at the floor.
  EXPECT_DOUBLE_EQ(s.lr(21), 1e-4);
  EXPECT_DOUBLE_EQ(s.lr(1000), 1e-4);
  // No warmup: the first step runs at the peak.
  EXPECT_DOUBLE_EQ((LrSchedule{2e-4, 0, 10, 0.0}.lr(0)), 2e-4);
}

TEST(LrSchedule, BadSettingsAreUserErrors) {
  EXPECT_THAT(error_message_of([] { LrSchedule{1e-3, 30, 20, 0.1}.lr(0); }), HasSubstr("warmup_steps (30)"));
  EXPECT_THAT(error_message_of([] { LrSchedule{-1.0, 0, 20, 0.1}.lr(0); }), HasSubstr("peak_lr"));
  EXPECT_THAT(error_message_of([] { LrSchedule{1e-3, 0, 20, 1.5}.lr(0); }), HasSubstr("min_lr_ratio"));
  EXPECT_THAT(error_message_of([] { LrSchedule{1e-3, 0, 20, 0.1}.lr(-1); }), HasSubstr("step must be >= 0"));
}

// ---------------------------------------------------------------------------------------------------
TEST(GradClip, MatchesTorchNormsAndScaling) {
  const Problem p = load_problem();
  const auto& steps = reference()["training"]["steps"];
  int clipped = 0, untouched = 0;
  for (std::size_t t = 0; t < p.grads.size(); ++t) {
    auto grads = p.grads[t];
    std::vector<std::pair<float*, int64_t>> views;
    for (auto& g : grads) views.emplace_back(g.data(), static_cast<int64_t>(g.size()));
    const double norm = clip_grad_norm(views, p.max_norm);
    const double torch_norm = steps[t]["total_norm"].get<double>();  // torch's fp32 norm
    EXPECT_NEAR(norm, torch_norm, 1e-6 * torch_norm) << "step " << t + 1;
    std::vector<std::pair<const float*, int64_t>> after;
    for (const auto& g : grads) after.emplace_back(g.data(), static_cast<int64_t>(g.size()));
    if (torch_norm > p.max_norm) {
      ++clipped;
      EXPECT_NEAR(global_grad_norm(after), p.max_norm / (norm + 1e-6) * norm, 1e-6) << "step " << t + 1;
    } else {
      ++untouched;
      EXPECT_EQ(grads, p.grads[t]) << "step " << t + 1 << ": a norm below the limit must not change gradients";
    }
  }
  // The fixture exercises both branches.
  EXPECT_GE(clipped, 5);
  EXPECT_GE(untouched, 5);
}

TEST(GradClip, GlobalNormAccumulatesInDoubleOverAllTensors) {
  const std::vector<float> a = {3.0f, 0.0f}, b = {4.0f}, empty;
  EXPECT_EQ(global_grad_norm({{a.data(), 2}, {b.data(), 1}, {empty.data(), 0}}), 5.0);
  EXPECT_EQ(global_grad_norm({}), 0.0);
  // 300000 elements of 1e-3 (several chunks): float accumulation would drift; double does not.
  const std::vector<float> many(300000, 1e-3f);
  const double expected = std::sqrt(300000.0) * static_cast<double>(1e-3f);
  EXPECT_NEAR(global_grad_norm({{many.data(), 300000}}), expected, 1e-12 * expected);
}

TEST(GradClip, NonFiniteNormLeavesGradientsAlone) {
  std::vector<float> g = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  std::vector<std::pair<float*, int64_t>> views = {{g.data(), 3}};
  EXPECT_TRUE(std::isnan(clip_grad_norm(views, 1.0)));
  EXPECT_EQ(g[0], 1.0f);
  EXPECT_EQ(g[2], 2.0f);
  std::vector<float> h = {std::numeric_limits<float>::infinity()};
  std::vector<std::pair<float*, int64_t>> hv = {{h.data(), 1}};
  EXPECT_TRUE(std::isinf(clip_grad_norm(hv, 1.0)));
  EXPECT_THAT(error_message_of([&] { clip_grad_norm(hv, 0.0); }), HasSubstr("max_grad_norm"));
}

// ---------------------------------------------------------------------------------------------------
TEST(AdamW, MatchesTorchAdamWTrajectory) {
  const Problem p = load_problem();
  AdamW opt = make_optimizer(p);
  const auto& steps = reference()["training"]["steps"];
  double worst = 0.0, worst_abs = 0.0;
  int full_checked = 0, exact = 0;
  for (std::size_t t = 0; t < p.grads.size(); ++t) {
    const double lr = p.schedule.lr(opt.step_count());
    EXPECT_NEAR(lr, steps[t]["lr"].get<double>(), 1e-12 * lr) << "step " << t + 1;
    train_step(opt, p, t);
    ASSERT_EQ(opt.step_count(), static_cast<int64_t>(t + 1));
    const auto norms = steps[t]["param_norms"].get<std::vector<double>>();
    for (std::size_t k = 0; k < p.names.size(); ++k)
      EXPECT_NEAR(l2(opt.master(k)), norms[k], 1e-6 * norms[k]) << p.names[k] << " after step " << t + 1;
    if (!steps[t].contains("params")) continue;
    for (std::size_t k = 0; k < p.names.size(); ++k) {
      const auto ref = steps[t]["params"][k].get<std::vector<float>>();
      const auto ours = opt.master(k);
      ASSERT_EQ(ours.size(), ref.size());
      for (std::size_t i = 0; i < ref.size(); ++i) {
        // 1e-6 relative, with an absolute floor for the few weights that sit near zero: each step
        // rounds an update of size ~lr (<= 1e-2) in fp32, so 20 steps leave ~20 * 2^-24 * 1e-2 = 1.2e-8
        // of noise that is no fault of either side (one weight of 2.6e-4 differs by 2e-9).
        const double diff = std::abs(static_cast<double>(ours[i]) - ref[i]);
        const double rel = diff / std::abs(static_cast<double>(ref[i]));
        if (std::abs(ref[i]) >= 1e-2) worst = std::max(worst, rel);
        worst_abs = std::max(worst_abs, diff);
        exact += ours[i] == ref[i];
        EXPECT_LE(diff, 1e-6 * std::abs(static_cast<double>(ref[i])) + 1.2e-8)
            << p.names[k] << "[" << i << "] after step " << t + 1 << ": ours " << ours[i] << " torch " << ref[i];
        ++full_checked;
      }
    }
  }
  EXPECT_EQ(full_checked, 5 * (7 + 165 + 129));
  EXPECT_LE(worst, 1e-6) << "weights of magnitude >= 1e-2 must agree to 1e-6 relative";
  std::cout << "[ info ] AdamW vs torch fp32: worst relative difference " << worst
            << " (weights >= 1e-2), worst absolute " << worst_abs << ", "
            << exact << " of " << full_checked << " elements bit-identical\n";
}

TEST(AdamW, ZeroGradientsOnlyDecayTheWeights) {
  AdamW opt({0.9, 0.999, 1e-8, 0.1});
  opt.add_parameter("w", 3);
  const std::vector<float> w0 = {1.0f, -2.0f, 0.5f};
  std::copy(w0.begin(), w0.end(), opt.master(0).begin());
  const std::vector<float> zero(3, 0.0f);
  opt.step(0.01, {zero.data()});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(opt.master(0)[i], w0[i] * static_cast<float>(1.0 - 0.01 * 0.1));
  EXPECT_EQ(opt.exp_avg(0)[0], 0.0f);
  EXPECT_EQ(opt.exp_avg_sq(0)[0], 0.0f);
}

TEST(AdamW, Bf16CopyRoundsToNearestEven) {
  AdamW opt;
  opt.add_parameter("w", 5);
  auto m = opt.master(0);
  m[0] = 1.0f + std::ldexp(1.0f, -8);      // halfway between bf16 1.0 and 1+2^-7: ties to even -> 1.0
  m[1] = 1.0f + 3 * std::ldexp(1.0f, -8);  // halfway between 1+2^-7 and 1+2^-6: ties to even -> 1+2^-6
  m[2] = 1.0f + 5 * std::ldexp(1.0f, -9);  // above halfway: rounds up to 1+2^-7
  m[3] = -3.0f;
  m[4] = 0.1f;
  std::vector<uint16_t> out(5);
  opt.copy_to_bf16(0, out.data());
  EXPECT_EQ(out[0], 0x3F80);
  EXPECT_EQ(out[1], 0x3F82);
  EXPECT_EQ(out[2], 0x3F81);
  EXPECT_EQ(out[3], 0xC040);
  EXPECT_EQ(out[4], 0x3DCD);  // 0.1f = 0x3DCCCCCD rounds up
}

TEST(AdamW, SaveLoadContinuesExactlyLikeAnUninterruptedRun) {
  const Problem p = load_problem();
  AdamW straight = make_optimizer(p);
  for (std::size_t t = 0; t < p.grads.size(); ++t) train_step(straight, p, t);

  ScratchDir dir;
  const auto file = dir.path() / "optimizer.safetensors";
  {
    AdamW first = make_optimizer(p);
    for (std::size_t t = 0; t < 8; ++t) train_step(first, p, t);
    first.save(file);
  }
  AdamW resumed(p.options);  // fresh registration, zero weights: everything must come from the file
  for (std::size_t i = 0; i < p.names.size(); ++i) resumed.add_parameter(p.names[i], static_cast<int64_t>(p.init[i].size()));
  resumed.load(file);
  EXPECT_EQ(resumed.step_count(), 8);
  for (std::size_t t = 8; t < p.grads.size(); ++t) train_step(resumed, p, t);

  EXPECT_EQ(resumed.step_count(), straight.step_count());
  for (std::size_t k = 0; k < p.names.size(); ++k) {
    const auto a = straight.master(k), b = resumed.master(k);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size_bytes()), 0) << p.names[k];
    EXPECT_EQ(std::memcmp(straight.exp_avg(k).data(), resumed.exp_avg(k).data(), a.size_bytes()), 0);
    EXPECT_EQ(std::memcmp(straight.exp_avg_sq(k).data(), resumed.exp_avg_sq(k).data(), a.size_bytes()), 0);
  }
}

TEST(AdamW, TruncatedOrForeignFilesAreUserErrorsAndLeaveTheStateAlone) {
  ScratchDir dir;
  AdamW saved;
  saved.add_parameter("a", 7);
  saved.add_parameter("b", 129);
  saved.master(1)[3] = 5.0f;
  const std::vector<float> g7(7, 0.5f), g129(129, -0.25f);
  saved.step(1e-3, {g7.data(), g129.data()});
  const auto file = dir.path() / "opt.safetensors";
  saved.save(file);

  AdamW target;
  target.add_parameter("a", 7);
  target.add_parameter("b", 129);
  target.master(0)[0] = 42.0f;

  // Truncated: the last 100 bytes missing.
  const auto truncated = dir.path() / "truncated.safetensors";
  std::filesystem::copy_file(file, truncated);
  std::filesystem::resize_file(truncated, std::filesystem::file_size(file) - 100);
  EXPECT_THAT(error_message_of([&] { target.load(truncated); }), HasSubstr("truncated.safetensors"));
  // Only the 8-byte header length survives.
  std::filesystem::resize_file(truncated, 8);
  EXPECT_THAT(error_message_of([&] { target.load(truncated); }), HasSubstr("truncated.safetensors"));
  EXPECT_THAT(error_message_of([&] { target.load(dir.path() / "absent.safetensors"); }), HasSubstr("not found"));

  // A safetensors file that is not optimizer state.
  const std::vector<float> w(7, 1.0f);
  io::write_safetensors(dir.path() / "model.safetensors",
                        {{"a", DType::kF32, {7}, std::as_bytes(std::span(w)), nullptr}});
  EXPECT_THAT(error_message_of([&] { target.load(dir.path() / "model.safetensors"); }),
              HasSubstr("not an AdamW optimizer state"));

  // Other parameters: a size mismatch, a missing parameter, an extra one.
  AdamW bigger;
  bigger.add_parameter("a", 7);
  bigger.add_parameter("b", 130);
  EXPECT_THAT(error_message_of([&] { bigger.load(file); }), AllOf(HasSubstr("master/b"), HasSubstr("[130]")));
  AdamW renamed;
  renamed.add_parameter("a", 7);
  renamed.add_parameter("c", 129);
  EXPECT_THAT(error_message_of([&] { renamed.load(file); }), HasSubstr("'master/c'"));
  AdamW fewer;
  fewer.add_parameter("a", 7);
  EXPECT_THAT(error_message_of([&] { fewer.load(file); }), HasSubstr("'master/b' belongs to no registered parameter"));

  // Nothing above changed the target; a good file still loads.
  EXPECT_EQ(target.master(0)[0], 42.0f);
  EXPECT_EQ(target.step_count(), 0);
  target.load(file);
  EXPECT_EQ(target.step_count(), 1);
  EXPECT_EQ(target.master(1)[3], saved.master(1)[3]);
  EXPECT_EQ(std::memcmp(target.exp_avg_sq(1).data(), saved.exp_avg_sq(1).data(), 129 * sizeof(float)), 0);
}

TEST(AdamW, BadRegistrationAndOptionsAreUserErrors) {
  AdamW opt;
  opt.add_parameter("w", 4);
  EXPECT_THAT(error_message_of([&] { opt.add_parameter("w", 4); }), HasSubstr("registered twice"));
  EXPECT_THAT(error_message_of([&] { opt.add_parameter("v", -1); }), HasSubstr("negative element count"));
  EXPECT_THAT(error_message_of([&] { opt.add_parameter("", 1); }), HasSubstr("non-empty name"));
  EXPECT_THAT(error_message_of([] { AdamW({1.0, 0.999, 1e-8, 0.0}); }), HasSubstr("beta1"));
  EXPECT_THAT(error_message_of([] { AdamW({0.9, 0.999, 1e-8, -0.1}); }), HasSubstr("weight_decay"));
  const std::vector<float> g(4, 1.0f);
  EXPECT_THAT(error_message_of([&] { opt.step(std::nan(""), {g.data()}); }), HasSubstr("learning rate"));
  // Wrong gradient count is a programming error, not the user's.
  error_message_of([&] { opt.step(1e-3, {}); }, ErrorKind::kInternal);
}

}  // namespace
}  // namespace refinery::train
