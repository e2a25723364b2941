// kd_loss: the distillation loss per row of student logits, through the CPU reference functions of
// src/distill/losses.hpp (one row per call, so each call's "mean over positions" is the row's own
// value: positions is 1 for a counted row, 0 for a row labelled -1, which they zero).
// Without a teacher (kd_weight == 0) the row is cross-entropy only, computed here in double:
//   CE_r = logsumexp(s_r) − s_r[label],  ∂CE_r/∂s_r = softmax(s_r) − onehot(label).
// Rows run in parallel (OpenMP); each row's outputs are written by one thread. Everything that
// can throw a user error (options, labels, the top-k cache) is checked before the parallel region,
// and anything thrown inside it is carried out and rethrown after it.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <vector>

#include "distill/losses.hpp"
#include "engine/backend/cpu/cpu_backend.hpp"

namespace refinery::backend::cpu {

namespace {

enum class TeacherKind { kNone, kDense, kSparse };

// Cross-entropy of one row; writes grad_scale · ce_weight · ∂CE/∂s to g when g != nullptr.
double ce_row(const float* s, int64_t vocab, int32_t label, double ce_weight, float grad_scale,
              float* g) {
  double hi = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < vocab; ++j) hi = std::max(hi, static_cast<double>(s[j]));
  double sum = 0.0;
  for (int64_t j = 0; j < vocab; ++j) sum += std::exp(static_cast<double>(s[j]) - hi);
  const double lse = hi + std::log(sum);
  const double ce = lse - static_cast<double>(s[label]);
  if (g != nullptr) {
    const double coef = static_cast<double>(grad_scale) * ce_weight;
    for (int64_t j = 0; j < vocab; ++j) {
      const double p = std::exp(static_cast<double>(s[j]) - lse);
      g[j] = static_cast<float>(coef * (p - (j == label ? 1.0 : 0.0)));
    }
  }
  return ce;
}

}  // namespace

void CpuBackend::kd_loss(const Tensor& student_logits, const Tensor& teacher_logits,
                         const Tensor& teacher_ids, const Tensor& teacher_log_probs,
                         const Tensor& labels, const KdLossOptions& options, float grad_scale,
                         Tensor& row_terms, Tensor& grad) {
  REFINERY_CHECK(student_logits.ndim() == 2, "kd_loss: student logits must be [R, V], found ",
                 student_logits.describe());
  const int64_t rows = student_logits.size(0), vocab = student_logits.size(1);
  require_f32(student_logits, {rows, vocab}, "kd_loss student_logits");
  require_i32(labels, {rows}, "kd_loss labels");
  require_f32(row_terms, {rows, 2}, "kd_loss row_terms");
  if (grad.defined()) require_f32(grad, {rows, vocab}, "kd_loss grad");
  REFINERY_CHECK(vocab >= 1, "kd_loss: empty vocabulary");

  TeacherKind kind = TeacherKind::kNone;
  int64_t k = 0;
  if (teacher_logits.defined()) {
    REFINERY_CHECK(!teacher_ids.defined() && !teacher_log_probs.defined(),
                   "kd_loss: a dense and a sparse teacher were both given");
    require_f32(teacher_logits, {rows, vocab}, "kd_loss teacher_logits");
    kind = TeacherKind::kDense;
  } else if (teacher_ids.defined() || teacher_log_probs.defined()) {
    REFINERY_CHECK(teacher_ids.defined() && teacher_log_probs.defined() && teacher_ids.ndim() == 2,
                   "kd_loss: a sparse teacher needs ids [R, k] and log-probs [R, k], found ",
                   teacher_ids.describe(), " and ", teacher_log_probs.describe());
    k = teacher_ids.size(1);
    require_i32(teacher_ids, {rows, k}, "kd_loss teacher_ids");
    require_f32(teacher_log_probs, {rows, k}, "kd_loss teacher_log_probs");
    kind = TeacherKind::kSparse;
  }
  distill::validate_options(options);
  REFINERY_CHECK(kind != TeacherKind::kNone || options.kd_weight == 0.0,
                 "kd_loss: kd_weight is ", options.kd_weight, " but no teacher was given");

  const int32_t* pl = labels.data<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    if (pl[r] < -1 || pl[r] >= vocab)
      throw_user_error("kd_loss: label of row ", r, " is ", pl[r], ", expected a token id in [0, ",
                       vocab, ") or -1 to ignore the position; check that the data's tokenizer "
                       "matches the model's vocabulary");
  if (kind == TeacherKind::kSparse)
    check_top_k_rows(teacher_ids.data<int32_t>(), teacher_log_probs.data<float>(), rows, k, vocab,
                     "kd_loss");

  const float* ps = student_logits.data<float>();
  float* pg = grad.defined() ? grad.mutable_data<float>() : nullptr;
  float* pt = row_terms.mutable_data<float>();
  // grad may alias the logits: each row is copied before its gradient is written.
  const bool aliased = grad.defined() && grad.shares_storage_with(student_logits);
  std::exception_ptr failure;

#pragma omp parallel if (rows > 1 && !omp_in_parallel())
  {
    std::vector<float> row_copy;
#pragma omp for schedule(dynamic)
    for (int64_t r = 0; r < rows; ++r) {
      try {
        const int32_t label = pl[r];
        float* g = pg != nullptr ? pg + r * vocab : nullptr;
        if (label == -1) {
          pt[2 * r] = pt[2 * r + 1] = 0.0f;
          if (g != nullptr) std::fill(g, g + vocab, 0.0f);
          continue;
        }
        const float* s = ps + r * vocab;
        if (aliased) {
          row_copy.assign(s, s + vocab);
          s = row_copy.data();
        }
        if (kind == TeacherKind::kNone) {
          pt[2 * r] = 0.0f;
          pt[2 * r + 1] = static_cast<float>(ce_row(s, vocab, label, options.ce_weight,
                                                    grad_scale, g));
          continue;
        }
        const distill::LossResult result =
            kind == TeacherKind::kDense
                ? distill::dense_loss(s, teacher_logits.data<float>() + r * vocab, &label, 1,
                                      vocab, options, g)
                : distill::sparse_loss(s, teacher_ids.data<int32_t>() + r * k,
                                       teacher_log_probs.data<float>() + r * k, k, &label, 1,
                                       vocab, options, g);
        pt[2 * r] = static_cast<float>(result.kd);
        pt[2 * r + 1] = static_cast<float>(result.ce);
        if (g != nullptr && grad_scale != 1.0f)
          for (int64_t j = 0; j < vocab; ++j) g[j] *= grad_scale;
      } catch (...) {
#pragma omp critical(refinery_kd_loss_failure)
        if (!failure) failure = std::current_exception();
      }
    }
  }
  if (failure) std::rethrow_exception(failure);
}

void CpuBackend::expand_top_k(const Tensor& ids, const Tensor& log_probs, const Tensor& log_prior,
                              Tensor& out) {
  REFINERY_CHECK(ids.ndim() == 2 && out.ndim() == 2, "expand_top_k: ids [R, k] and out [R, V], found ",
                 ids.describe(), " and ", out.describe());
  const int64_t rows = ids.size(0), k = ids.size(1), vocab = out.size(1);
  require_i32(ids, {rows, k}, "expand_top_k ids");
  require_f32(log_probs, {rows, k}, "expand_top_k log_probs");
  require_f32(log_prior, {vocab}, "expand_top_k log_prior");
  require_f32(out, {rows, vocab}, "expand_top_k out");
  check_top_k_rows(ids.data<int32_t>(), log_probs.data<float>(), rows, k, vocab, "expand_top_k");
  const int32_t* pi = ids.data<int32_t>();
  const float* pl = log_probs.data<float>();
  const float* prior = log_prior.data<float>();
  float* po = out.mutable_data<float>();
#pragma omp parallel for schedule(static) if (rows > 1 && !omp_in_parallel())
  for (int64_t r = 0; r < rows; ++r)
    distill::expand_top_k_row(pi + r * k, pl + r * k, k, prior, vocab, po + r * vocab);
}

}  // namespace refinery::backend::cpu
