// The CPU backend's training-loss and optimizer ops against the reference implementations they
// must reproduce: kd_loss vs distill::dense_loss / sparse_loss on the whole batch (and a direct
// cross-entropy), sum_squares vs train::global_grad_norm, adamw_update bitwise vs
// train::AdamW::step, convert vs the dtype helpers.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend_test_util.hpp"
#include "distill/losses.hpp"
#include "engine/train/adamw.hpp"
#include "engine/train/grad_clip.hpp"
#include "gradient_check.hpp"

namespace refinery::backend {
namespace {

using test::doubles;
using test::random_f32;

constexpr int64_t kRows = 6, kVocab = 23;
const std::vector<int32_t> kLabels = {3, -1, 0, 22, 7, -1};  // 4 counted positions
constexpr int64_t kPositions = 4;

Tensor labels_tensor() { return Tensor::copy_of(DType::kI32, {kRows}, kLabels.data()); }

// Σ_r row_terms[r, column] / positions.
double mean_term(const Tensor& terms, int column) {
  double s = 0.0;
  for (int64_t r = 0; r < kRows; ++r) s += terms.data<float>()[2 * r + column];
  return s / kPositions;
}

void expect_uncounted_rows_zero(const Tensor& terms, const Tensor& grad) {
  for (int64_t r = 0; r < kRows; ++r) {
    if (kLabels[r] != -1) continue;
    EXPECT_EQ(terms.data<float>()[2 * r], 0.0f);
    EXPECT_EQ(terms.data<float>()[2 * r + 1], 0.0f);
    for (int64_t j = 0; j < kVocab; ++j) EXPECT_EQ(grad.data<float>()[r * kVocab + j], 0.0f);
  }
}

// -log softmax(s_r)[label] in double.
double direct_ce(const Tensor& s, int64_t r, int32_t label) {
  const float* row = s.data<float>() + r * kVocab;
  double mx = -INFINITY, sum = 0.0;
  for (int64_t j = 0; j < kVocab; ++j) mx = std::max(mx, double(row[j]));
  for (int64_t j = 0; j < kVocab; ++j) sum += std::exp(double(row[j]) - mx);
  return mx + std::log(sum) - row[label];
}

TEST(CpuBackwardKdLoss, DenseTeacherMatchesTheBatchReference) {
  auto be = make_cpu_backend();
  const Tensor s = random_f32({kRows, kVocab}, 1, 2.0f), t = random_f32({kRows, kVocab}, 2, 2.0f);
  for (Divergence div : {Divergence::kForwardKl, Divergence::kReverseKl, Divergence::kJsd,
                         Divergence::kSkewKl}) {
    SCOPED_TRACE(distill::divergence_name(div));
    KdLossOptions opt;
    opt.divergence = div;
    opt.temperature = 2.0;
    opt.kd_weight = 0.7;
    opt.ce_weight = 0.3;
    std::vector<float> gref(kRows * kVocab);
    const distill::LossResult ref = distill::dense_loss(
        s.data<float>(), t.data<float>(), kLabels.data(), kRows, kVocab, opt, gref.data());
    ASSERT_EQ(ref.positions, kPositions);
    Tensor terms = test::poisoned({kRows, 2}), grad = test::poisoned({kRows, kVocab});
    // grad_scale 1: each row's gradient is its own; the batch mean divides by the positions.
    be->kd_loss(s, t, Tensor{}, Tensor{}, labels_tensor(), opt, 1.0f, terms, grad);
    EXPECT_NEAR(mean_term(terms, 0), ref.kd, 1e-6 * std::abs(ref.kd) + 1e-7);
    EXPECT_NEAR(mean_term(terms, 1), ref.ce, 1e-6 * std::abs(ref.ce) + 1e-7);
    std::vector<float> scaled = test::values(grad);
    for (float& g : scaled) g /= kPositions;
    EXPECT_LT(test::max_abs_diff(scaled, gref), 1e-6 * test::max_abs(gref));
    expect_uncounted_rows_zero(terms, grad);
    // grad_scale = 1 / positions gives the batch gradient directly.
    be->kd_loss(s, t, Tensor{}, Tensor{}, labels_tensor(), opt, 1.0f / kPositions, terms, grad);
    EXPECT_LT(test::max_abs_diff(test::values(grad), gref), 1e-6 * test::max_abs(gref));
  }
}

TEST(CpuBackwardKdLoss, SparseTeacherMatchesTheBatchReference) {
  auto be = make_cpu_backend();
  const int64_t k = 5;
  const Tensor s = random_f32({kRows, kVocab}, 3, 2.0f), t = random_f32({kRows, kVocab}, 4, 2.0f);
  // The top-5 of each teacher row with log-softmax values over the whole vocabulary.
  std::vector<int32_t> ids(kRows * k);
  std::vector<float> lps(kRows * k);
  for (int64_t r = 0; r < kRows; ++r) {
    const float* row = t.data<float>() + r * kVocab;
    std::vector<int32_t> order(kVocab);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    double sum = 0.0;
    for (int64_t j = 0; j < kVocab; ++j) sum += std::exp(double(row[j]) - row[order[0]]);
    for (int64_t i = 0; i < k; ++i) {
      ids[r * k + i] = order[i];
      lps[r * k + i] = static_cast<float>(double(row[order[i]]) - row[order[0]] - std::log(sum));
    }
  }
  const Tensor ids_t = Tensor::copy_of(DType::kI32, {kRows, k}, ids.data());
  const Tensor lps_t = Tensor::copy_of(DType::kF32, {kRows, k}, lps.data());
  for (Divergence div : {Divergence::kForwardKl, Divergence::kJsd}) {
    KdLossOptions opt;
    opt.divergence = div;
    opt.temperature = 1.5;
    opt.kd_weight = 1.0;
    opt.ce_weight = 0.5;
    std::vector<float> gref(kRows * kVocab);
    const distill::LossResult ref =
        distill::sparse_loss(s.data<float>(), ids.data(), lps.data(), k, kLabels.data(), kRows,
                             kVocab, opt, gref.data());
    Tensor terms = test::poisoned({kRows, 2}), grad = test::poisoned({kRows, kVocab});
    be->kd_loss(s, Tensor{}, ids_t, lps_t, labels_tensor(), opt, 1.0f / kPositions, terms, grad);
    EXPECT_NEAR(mean_term(terms, 0), ref.kd, 1e-6 * std::abs(ref.kd) + 1e-7);
    EXPECT_NEAR(mean_term(terms, 1), ref.ce, 1e-6 * std::abs(ref.ce) + 1e-7);
    EXPECT_LT(test::max_abs_diff(test::values(grad), gref), 1e-6 * test::max_abs(gref));
    expect_uncounted_rows_zero(terms, grad);
  }
}

TEST(CpuBackwardKdLoss, CrossEntropyOnlyWithoutATeacher) {
  auto be = make_cpu_backend();
  const Tensor s = random_f32({kRows, kVocab}, 5, 3.0f);
  KdLossOptions opt;
  opt.kd_weight = 0.0;
  opt.ce_weight = 0.8;
  const float grad_scale = 0.25f;
  Tensor terms = test::poisoned({kRows, 2}), grad = test::poisoned({kRows, kVocab});
  be->kd_loss(s, Tensor{}, Tensor{}, Tensor{}, labels_tensor(), opt, grad_scale, terms, grad);
  expect_uncounted_rows_zero(terms, grad);
  for (int64_t r = 0; r < kRows; ++r) {
    const int32_t y = kLabels[r];
    if (y == -1) continue;
    EXPECT_EQ(terms.data<float>()[2 * r], 0.0f);
    const double ce = direct_ce(s, r, y);
    EXPECT_NEAR(terms.data<float>()[2 * r + 1], ce, 1e-6 * ce);
    const double lse = ce + s.data<float>()[r * kVocab + y];
    for (int64_t j = 0; j < kVocab; ++j) {
      const double p = std::exp(double(s.data<float>()[r * kVocab + j]) - lse);
      const double expected = grad_scale * opt.ce_weight * (p - (j == y ? 1.0 : 0.0));
      EXPECT_NEAR(grad.data<float>()[r * kVocab + j], expected, 1e-7) << r << "," << j;
    }
  }
}

TEST(CpuBackwardKdLoss, CrossEntropyIsReportedWhenItsWeightIsZero) {
  auto be = make_cpu_backend();
  const Tensor s = random_f32({kRows, kVocab}, 6), t = random_f32({kRows, kVocab}, 7);
  KdLossOptions opt;  // forward KL, kd_weight 1, ce_weight 0
  Tensor terms = test::poisoned({kRows, 2}), grad = test::poisoned({kRows, kVocab});
  be->kd_loss(s, t, Tensor{}, Tensor{}, labels_tensor(), opt, 1.0f, terms, grad);
  for (int64_t r = 0; r < kRows; ++r) {
    if (kLabels[r] == -1) continue;
    const double ce = direct_ce(s, r, kLabels[r]);
    EXPECT_NEAR(terms.data<float>()[2 * r + 1], ce, 1e-6 * ce);
  }
}

TEST(CpuBackwardKdLoss, GradientMayOverwriteTheLogits) {
  auto be = make_cpu_backend();
  const Tensor s = random_f32({kRows, kVocab}, 8, 2.0f), t = random_f32({kRows, kVocab}, 9);
  for (bool with_teacher : {true, false}) {
    KdLossOptions opt;
    opt.kd_weight = with_teacher ? 1.0 : 0.0;
    opt.ce_weight = 0.5;
    const Tensor teacher = with_teacher ? t : Tensor{};
    Tensor terms = test::poisoned({kRows, 2}), grad = test::poisoned({kRows, kVocab});
    be->kd_loss(s, teacher, Tensor{}, Tensor{}, labels_tensor(), opt, 0.5f, terms, grad);
    Tensor inplace = s.clone(), terms2 = test::poisoned({kRows, 2});
    be->kd_loss(inplace, teacher, Tensor{}, Tensor{}, labels_tensor(), opt, 0.5f, terms2, inplace);
    EXPECT_TRUE(test::bitwise_equal(grad, inplace)) << with_teacher;
    EXPECT_TRUE(test::bitwise_equal(terms, terms2)) << with_teacher;
  }
}

TEST(CpuBackwardKdLoss, RejectsBadLabelsAndAMissingTeacher) {
  auto be = make_cpu_backend();
  const Tensor s = random_f32({2, kVocab}, 10);
  Tensor terms = Tensor::empty(DType::kF32, {2, 2}), grad = Tensor::empty(DType::kF32, {2, kVocab});
  const std::vector<int32_t> bad = {1, kVocab};
  KdLossOptions ce_only;
  ce_only.kd_weight = 0.0;
  ce_only.ce_weight = 1.0;
  try {
    be->kd_loss(s, Tensor{}, Tensor{}, Tensor{}, Tensor::copy_of(DType::kI32, {2}, bad.data()),
                ce_only, 1.0f, terms, grad);
    FAIL() << "label 23 of a 23-token vocabulary was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_NE(std::string(e.what()).find("label of row 1"), std::string::npos) << e.what();
  }
  const std::vector<int32_t> good = {1, 2};
  EXPECT_THROW(be->kd_loss(s, Tensor{}, Tensor{}, Tensor{},
                           Tensor::copy_of(DType::kI32, {2}, good.data()), KdLossOptions{}, 1.0f,
                           terms, grad),
               Error);
}

// ---------------------------------------------------------------------------------- sum_squares

TEST(CpuBackwardSumSquares, MatchesTheGradientNormForAnyThreadCount) {
  const Tensor t = random_f32({200003}, 11);  // 4 chunks of 2^16
  double direct = 0.0;
  for (float v : test::values(t)) direct += double(v) * v;
  const Tensor b = test::convert(t, DType::kBF16);
  double direct_bf16 = 0.0;
  for (float v : test::values(b)) direct_bf16 += double(v) * v;
  double results[2][2];
  for (int run = 0; run < 2; ++run) {
    const int saved = omp_get_max_threads();
    auto be = make_cpu_backend(run == 0 ? 1 : 4);
    results[run][0] = be->sum_squares(t);
    results[run][1] = be->sum_squares(b);
    omp_set_num_threads(saved);
  }
  EXPECT_EQ(results[0][0], results[1][0]);
  EXPECT_EQ(results[0][1], results[1][1]);
  EXPECT_NEAR(results[0][0], direct, 1e-12 * direct);
  EXPECT_NEAR(results[0][1], direct_bf16, 1e-12 * direct_bf16);
  // The same chunked sum as the trainer's clipping.
  EXPECT_EQ(std::sqrt(results[0][0]), train::global_grad_norm({{t.data<float>(), t.numel()}}));
}

// Σ (a − b)² (AWQ's search loss): a double loop, any thread count, mixed dtypes, zero for a = b,
// and a shape mismatch refused.
TEST(CpuSumSquaredDifference, MatchesADoubleLoop) {
  const Tensor a = random_f32({70001}, 12), b = random_f32({70001}, 13);
  const Tensor b16 = test::convert(b, DType::kBF16);
  double direct = 0.0, direct_mixed = 0.0;
  const auto va = test::values(a), vb = test::values(b), vb16 = test::values(b16);
  for (std::size_t i = 0; i < va.size(); ++i) {
    direct += (double(va[i]) - vb[i]) * (double(va[i]) - vb[i]);
    direct_mixed += (double(va[i]) - vb16[i]) * (double(va[i]) - vb16[i]);
  }
  double results[2];
  for (int run = 0; run < 2; ++run) {
    const int saved = omp_get_max_threads();
    auto be = make_cpu_backend(run == 0 ? 1 : 3);
    results[run] = be->sum_squared_difference(a, b);
    EXPECT_NEAR(be->sum_squared_difference(a, b16), direct_mixed, 1e-12 * direct_mixed);
    EXPECT_EQ(be->sum_squared_difference(a, a), 0.0);
    EXPECT_THROW(be->sum_squared_difference(a, random_f32({70000}, 1)), Error);
    omp_set_num_threads(saved);
  }
  EXPECT_EQ(results[0], results[1]);
  EXPECT_NEAR(results[0], direct, 1e-12 * direct);
}

// ---------------------------------------------------------------------------------- adamw

// The scalars of step `step` exactly as train::AdamW::step forms them.
AdamWScalars scalars_for(const train::AdamWOptions& o, double lr, int64_t step, float grad_scale) {
  const double t = static_cast<double>(step);
  AdamWScalars s;
  s.decay = o.weight_decay != 0.0;
  s.decay_factor = static_cast<float>(1.0 - lr * o.weight_decay);
  s.lerp_weight = static_cast<float>(1.0 - o.beta1);
  s.beta2 = static_cast<float>(o.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - o.beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(o.beta2, t)));
  s.eps = static_cast<float>(o.eps);
  s.neg_step_size = static_cast<float>(-(lr / (1.0 - std::pow(o.beta1, t))));
  s.grad_scale = grad_scale;
  return s;
}

TEST(CpuBackwardAdamW, BitwiseEqualToTrainAdamW) {
  auto be = make_cpu_backend();
  const int64_t n = 333;
  struct Case {
    double weight_decay;
    float grad_scale;
    DType compute;
  };
  for (const Case c : {Case{0.01, 1.0f, DType::kBF16}, Case{0.0, 1.0f, DType::kF32},
                       Case{0.1, 0.37f, DType::kBF16}}) {
    SCOPED_TRACE(testing::Message() << "wd=" << c.weight_decay << " scale=" << c.grad_scale);
    train::AdamWOptions o;
    o.beta1 = 0.9;
    o.beta2 = 0.95;
    o.weight_decay = c.weight_decay;
    train::AdamW reference(o);
    reference.add_parameter("p", n);
    const Tensor init = random_f32({n}, 12);
    std::copy_n(init.data<float>(), n, reference.master(0).data());
    Tensor master = init.clone(), m = Tensor::zeros(DType::kF32, {n});
    Tensor v = Tensor::zeros(DType::kF32, {n}), compute = Tensor::empty(c.compute, {n});
    for (int64_t step = 1; step <= 4; ++step) {
      const double lr = 1e-3 * step;
      // Gradients of mixed magnitudes, some exactly zero.
      Tensor grad = random_f32({n}, 100 + step, step == 2 ? 1e-4f : 1.0f);
      for (int64_t i = 0; i < n; i += 17) grad.mutable_data<float>()[i] = 0.0f;
      // train::AdamW takes the gradient already scaled (float product, as adamw_update forms it).
      std::vector<float> scaled(n);
      for (int64_t i = 0; i < n; ++i) scaled[i] = grad.data<float>()[i] * c.grad_scale;
      reference.step(lr, {scaled.data()});
      be->adamw_update(master, grad, m, v, scalars_for(o, lr, step, c.grad_scale), compute);
      ASSERT_EQ(std::memcmp(master.data(), reference.master(0).data(), n * 4), 0) << step;
      ASSERT_EQ(std::memcmp(m.data(), reference.exp_avg(0).data(), n * 4), 0) << step;
      ASSERT_EQ(std::memcmp(v.data(), reference.exp_avg_sq(0).data(), n * 4), 0) << step;
      if (c.compute == DType::kBF16) {
        std::vector<uint16_t> bf16(n);
        reference.copy_to_bf16(0, bf16.data());
        ASSERT_EQ(std::memcmp(compute.data(), bf16.data(), n * 2), 0) << step;
      } else {
        ASSERT_TRUE(test::bitwise_equal(compute, master)) << step;
      }
    }
    // The weights moved (the check above is not comparing two untouched copies).
    EXPECT_GT(test::max_abs_diff(test::values(master), test::values(init)), 1e-3);
  }
  // compute undefined: the master weights alone.
  Tensor master = random_f32({5}, 1), m = Tensor::zeros(DType::kF32, {5});
  Tensor v = Tensor::zeros(DType::kF32, {5}), none;
  EXPECT_NO_THROW(be->adamw_update(master, random_f32({5}, 2), m, v,
                                   scalars_for(train::AdamWOptions{}, 1e-3, 1, 1.0f), none));
}

// ---------------------------------------------------------------------------------- convert

TEST(CpuBackwardConvert, EveryPairMatchesTheDtypeHelpers) {
  auto be = make_cpu_backend();
  const int64_t n = 100003;  // several chunks, parallel
  const Tensor base = random_f32({n}, 13, 3.0f);
  for (DType from : {DType::kF32, DType::kBF16, DType::kF16}) {
    const Tensor src = test::convert(base, from);
    const std::vector<float> widened = test::values(src);
    for (DType to : {DType::kF32, DType::kBF16, DType::kF16}) {
      Tensor dst = Tensor::empty(to, {n});
      be->convert(src, dst);
      Tensor expected = Tensor::empty(to, {n});
      convert_from_f32(to, widened.data(), expected.mutable_data(), widened.size());
      EXPECT_TRUE(test::bitwise_equal(dst, expected)) << dtype_name(from) << " -> " << dtype_name(to);
    }
  }
  Tensor wrong = Tensor::empty(DType::kF32, {n + 1});
  EXPECT_THROW(be->convert(base, wrong), Error);
}

}  // namespace
}  // namespace refinery::backend
