#pragma once
// One position of a model compared with a reference distribution (the reference is p, the model
// q; both over the same vocabulary; logits f32 [vocab]).
//
// Full reference (a model, or a cache made with --top-k 0): exact, in double,
//   KL(p || q) = sum_i p_i (log p_i - log q_i).
// (llama.cpp drops terms with log p_i <= -16 because its base file stores 16-bit quantized
// log-probs; we keep every term.)
//
// Top-k reference (indices S, |S| = k, and log p_i for i in S): the distributions are coarsened
// to k + 1 outcomes — the k cached tokens and "any other token" — with tail masses
//   T = max(0, 1 - sum_{i in S} p_i)   and   Q = sum_{i not in S} q_i  (summed directly, not as
//   1 - sum, so that it keeps its precision when it is tiny),
//   KL_k = sum_{i in S} p_i (log p_i - log q_i) + T (log T - log Q)   (the last term is 0 when
//   T = 0).
// KL_k <= KL(p || q) (coarsening never increases a divergence); equality when the tail is empty
// or the two tails are proportional. The reference's top-1 is the cache's first index. The
// reference probability of an actual next token outside S is taken as the tail spread evenly,
// max(T, 1e-9) / (vocab - k): the reference perplexity from a top-k cache is an approximation
// whenever that happens (counted in `ref_tail_tokens`).

#include <cstdint>

namespace refinery::eval {

struct ReferenceRow {
  const float* logits = nullptr;     // full: [vocab]
  const int32_t* indices = nullptr;  // top-k: [k], most likely first
  const float* log_probs = nullptr;  // top-k: [k]
  int64_t k = 0;
};

struct PositionComparison {
  double kl = 0;       // KL(ref || model), nats
  double nll = 0;      // -log q(target)
  double nll_ref = 0;  // -log p(target)
  double dp = 0;       // q(target) - p(target)
  bool same_top = false;
  bool ref_tail = false;  // top-k reference: the target was not among the k
};

PositionComparison compare_position(const float* model_logits, int64_t vocab,
                                    const ReferenceRow& reference, int32_t target);

}  // namespace refinery::eval
