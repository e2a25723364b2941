#pragma once
// The trained teacher's top-32 reference (tests/fixtures/teacher_reference, made by
// tests/fixtures/make_teacher_reference.py with transformers in fp32) and the comparison of the
// engine's logits with it, shared by the CPU (f32) and CUDA (bf16) tests.
//
// Per position the reference stores the 32 most likely ids, their log-softmax over the whole
// vocabulary, the log of the remaining tail mass, and the gap between its top-1 and top-2 logits.
// The comparison measures, against the engine's full logit row [vocab]:
//   - top-1 agreement, and every flip with the reference's top-1/top-2 gap;
//   - |Δ log-prob| over the 32 stored ids;
//   - KL(reference || engine) over the stored support: the 32 ids plus one tail bucket (whose
//     reference mass is the stored tail_logprob = log(1 - Σ stored p), summed over the logits by
//     the generator so that it keeps its digits when the tail is tiny). Merging
//     tokens into a bucket can only lower KL (data processing inequality), so this is a lower bound
//     of the full-vocabulary KL; it is close to it because the stored ids hold 83% of the mass on
//     average (reference.json, summary.top_k_mass).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iomanip>
#include <sstream>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/io/safetensors_file.hpp"

namespace refinery::model::test {

inline std::filesystem::path teacher_model_dir() {
  return std::filesystem::path(REFINERY_SOURCE_DIR) / "models" / "refinery-teacher-moe";
}

inline std::filesystem::path teacher_reference_dir() {
  return std::filesystem::path(REFINERY_SOURCE_DIR) / "tests" / "fixtures" / "teacher_reference";
}

struct TeacherReference {
  int64_t sequences = 0, seq_len = 0, k = 0;
  std::vector<int32_t> input_ids;      // [S, L] (stored int64)
  std::vector<int32_t> topk_ids;       // [S, L, K], descending logits
  std::vector<float> topk_logprobs;    // [S, L, K]
  std::vector<float> logsumexp;        // [S, L]
  std::vector<float> tail_logprob;     // [S, L]: log of the mass outside the top K
  std::vector<int32_t> argmax;         // [S, L]
  std::vector<float> top1_top2_gap;    // [S, L], logits

  std::span<const int32_t> ids(int64_t s) const {
    return {input_ids.data() + s * seq_len, static_cast<std::size_t>(seq_len)};
  }

  static TeacherReference load() {
    const auto file = io::SafetensorsFile::open(teacher_reference_dir() / "reference.safetensors");
    // The tensor `name` of dtype `dtype` and shape `shape`, its elements copied into `out`.
    auto read = [&file](const std::string& name, DType dtype, std::vector<int64_t> shape,
                        auto& out) {
      const auto* e = file.find(name);
      if (!e || e->dtype != dtype || e->shape != shape) {
        ADD_FAILURE() << "reference.safetensors: tensor " << name << " missing or of another "
                      << "dtype/shape; rerun tests/fixtures/make_teacher_reference.py";
        return false;
      }
      using T = typename std::decay_t<decltype(out)>::value_type;
      if (dtype == DType::kI64) {
        std::vector<int64_t> wide(e->num_elements());
        std::memcpy(wide.data(), file.bytes(*e).data(), wide.size() * sizeof(int64_t));
        out.assign(wide.begin(), wide.end());
      } else {
        out.resize(e->num_elements());
        std::memcpy(out.data(), file.bytes(*e).data(), out.size() * sizeof(T));
      }
      return true;
    };
    TeacherReference r;
    const auto* ids = file.find("topk_ids");
    if (!ids || ids->shape.size() != 3) {
      ADD_FAILURE() << "reference.safetensors: topk_ids [S, L, K] missing";
      return r;
    }
    r.sequences = ids->shape[0];
    r.seq_len = ids->shape[1];
    r.k = ids->shape[2];
    const std::vector<int64_t> sl{r.sequences, r.seq_len}, slk{r.sequences, r.seq_len, r.k};
    const bool ok = read("input_ids", DType::kI64, sl, r.input_ids) &&
                    read("topk_ids", DType::kI32, slk, r.topk_ids) &&
                    read("topk_logprobs", DType::kF32, slk, r.topk_logprobs) &&
                    read("logsumexp", DType::kF32, sl, r.logsumexp) &&
                    read("tail_logprob", DType::kF32, sl, r.tail_logprob) &&
                    read("argmax", DType::kI32, sl, r.argmax) &&
                    read("top1_top2_gap", DType::kF32, sl, r.top1_top2_gap);
    if (!ok) r.sequences = 0;
    return r;
  }
};

// A position where the engine's top-1 is not the reference's.
struct TopOneFlip {
  int64_t sequence = 0, position = 0;
  int32_t reference_id = 0, engine_id = 0;
  double reference_gap = 0;     // the reference's top-1 minus top-2 logit
  double reference_deficit = 0; // the reference's logit of its top-1 minus of engine_id (>= the
                                // gap; a lower bound, the 32nd logit's, when engine_id is not stored)
};

// Accumulates the comparison over positions; add() one sequence's logits at a time.
class TeacherComparison {
 public:
  explicit TeacherComparison(const TeacherReference& ref) : ref_(ref) {}

  // logits: the engine's f32 logits of sequence `s`, [L, vocab] row-major.
  void add(int64_t s, const float* logits, int64_t vocab) {
    const int64_t k = ref_.k;
    std::vector<char> stored(static_cast<std::size_t>(vocab));
    for (int64_t t = 0; t < ref_.seq_len; ++t) {
      const float* row = logits + t * vocab;
      const int64_t at = s * ref_.seq_len + t;
      const int32_t* top_ids = ref_.topk_ids.data() + at * k;
      const float* top_lp = ref_.topk_logprobs.data() + at * k;

      // The engine's log-sum-exp in f64, and its tail mass outside the stored ids summed directly
      // (not as 1 - Σ q, which loses all digits when the tail is tiny).
      double m = -INFINITY;
      for (int64_t v = 0; v < vocab; ++v) m = std::max(m, double(row[v]));
      std::fill(stored.begin(), stored.end(), 0);
      for (int64_t j = 0; j < k; ++j) {
        if (top_ids[j] < 0 || top_ids[j] >= vocab) {
          ADD_FAILURE() << "reference id " << top_ids[j] << " outside the vocabulary " << vocab;
          return;
        }
        stored[top_ids[j]] = 1;
      }
      double total = 0, tail = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        const double e = std::exp(double(row[v]) - m);
        total += e;
        if (!stored[v]) tail += e;
      }
      const double lse = m + std::log(total);
      max_lse_error_ = std::max(max_lse_error_, std::abs(lse - ref_.logsumexp[at]));

      // KL over the stored ids plus the tail bucket; p from the reference, q from the engine.
      // The reference's 33 bucket probabilities sum to 1 only up to the f32 rounding of the stored
      // log-probs (~1e-7), which would enter KL at first order (a few 1e-8, of either sign); so
      // they are renormalized (log Z subtracted) first. Then p and q are both normalized, KL >= 0,
      // and the rounding enters at second order only (~1e-14).
      double z = 0;
      for (int64_t j = 0; j < k; ++j) z += std::exp(double(top_lp[j]));
      const double lp_tail = ref_.tail_logprob[at], lq_tail = std::log(tail) - std::log(total);
      if (std::isfinite(lp_tail)) z += std::exp(lp_tail);
      const double log_z = std::log(z);
      double kl = 0;
      for (int64_t j = 0; j < k; ++j) {
        const double lp = top_lp[j], lq = double(row[top_ids[j]]) - lse;
        max_logprob_error_ = std::max(max_logprob_error_, std::abs(lq - lp));
        kl += std::exp(lp - log_z) * (lp - log_z - lq);
      }
      if (std::isfinite(lp_tail)) kl += std::exp(lp_tail - log_z) * (lp_tail - log_z - lq_tail);
      if (std::isnan(kl)) kl = INFINITY;
      kl_sum_ += kl;
      max_kl_ = std::max(max_kl_, kl);

      const int32_t ours = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
      const int32_t best = ref_.argmax[at];
      const double gap = ref_.top1_top2_gap[at];
      if (gap < kNearTie) ++near_ties_;
      if (ours == best) {
        ++agreeing_;
      } else {
        TopOneFlip f{s, t, best, ours, gap, double(top_lp[0]) - double(top_lp[k - 1])};
        for (int64_t j = 0; j < k; ++j)
          if (top_ids[j] == ours) f.reference_deficit = double(top_lp[0]) - double(top_lp[j]);
        flips_.push_back(f);
      }
      ++positions_;
    }
  }

  // Reference gaps below this are near ties: an f32 rounding difference may flip them.
  static constexpr double kNearTie = 1e-3;

  int64_t positions() const { return positions_; }
  int64_t near_ties() const { return near_ties_; }
  const std::vector<TopOneFlip>& flips() const { return flips_; }
  double agreement() const { return positions_ ? double(agreeing_) / double(positions_) : 0.0; }
  double mean_kl() const { return positions_ ? kl_sum_ / double(positions_) : INFINITY; }
  double max_kl() const { return max_kl_; }
  double max_logprob_error() const { return max_logprob_error_; }
  double max_lse_error() const { return max_lse_error_; }

  // One line per flip, for the test log.
  std::string describe_flips() const {
    std::ostringstream out;
    out << std::setprecision(3);
    for (const auto& f : flips_)
      out << "  sequence " << f.sequence << " position " << f.position << ": reference "
          << f.reference_id << ", engine " << f.engine_id << ", reference top-1/top-2 gap "
          << f.reference_gap << ", reference logit deficit of the engine's choice "
          << f.reference_deficit << "\n";
    return out.str();
  }

 private:
  const TeacherReference& ref_;
  int64_t positions_ = 0, agreeing_ = 0, near_ties_ = 0;
  std::vector<TopOneFlip> flips_;
  double kl_sum_ = 0, max_kl_ = 0, max_logprob_error_ = 0, max_lse_error_ = 0;
};

}  // namespace refinery::model::test
