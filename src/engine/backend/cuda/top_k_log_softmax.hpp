#pragma once
// Fused, vocabulary-chunked log-softmax + top-k after the LM head (DESIGN §1.4: the teacher never
// holds a full f32 [tokens x vocab] buffer). The caller runs the LM-head GEMM one vocabulary chunk
// at a time into an f32 scratch [rows, cols] and feeds each chunk to top_k_log_softmax_update;
// finish then writes, per row, the k most likely token ids (most likely first; ties: lower id
// first, the order of refinery::eval::top_k_log_probs) with their log-softmax over the WHOLE
// vocabulary, and the row's log-sum-exp.
//
// Plain C++ (no CUDA headers): `stream` is a cudaStream_t passed as void* (nullptr: the legacy
// default stream). Every call only enqueues work on `stream`; nothing synchronizes. Built from
// top_k_log_softmax.cu with CUDA and top_k_log_softmax_nocuda.cpp without (there every function
// throws an internal error).
//
// Contract:
//   - the chunks of one begin..finish sequence are disjoint column ranges (any order, any sizes;
//     a chunk may be smaller than k); ids must fit int32 (first_col + cols <= 2^31 - 1), and
//     cols + k < 2^31;
//   - the set chosen is exact: the same k ids as a full sort of the row (ties: lower id first);
//   - NaN: a NaN logit makes the row's log-sum-exp and every log-prob of that row NaN, as on the
//     CPU (eval::row_stats); for the ranking every NaN counts as larger than +inf, so the NaN
//     positions come first (the CPU's order is unspecified there). -0 ties with +0.
//   - -inf logits are ordinary (exp(-inf) = 0; they rank last, ties by id). A row whose logits are
//     all -inf gets log-sum-exp -inf and NaN log-probs (-inf - -inf); the CPU gives NaN for both.
//   - log-sum-exp is accumulated in f32 (online max + rescaled sum, merged across chunks); its
//     error is a few f32 ulps of the sum (relative ~1e-6 or better), see the GPU test.
#include <cstdint>

namespace refinery::backend::cuda {

// Largest supported k. The update keeps the running k plus candidates in a 4096-entry shared
// buffer, and finish sorts the k entries in shared memory (bitonic, k rounded up to a power of 2).
inline constexpr int64_t kMaxTopK = 1024;

// Per-row running state in caller-allocated device memory, for rows r < rows:
//   max[rows] f32, sum[rows] f32 (Σ exp(x - max) so far), values[rows * k] f32, ids[rows * k] i32
//   (the best k seen so far, any order inside a row until finish; unfilled slots have id -1).
// Priority sampling (priority_sampling.hpp): with `sampled`, elements are RANKED by logit + E(seed,
// first_row_key + r, id) instead of the logit (the log-sum-exp stays the logits'), so finish
// writes the ids of the largest keys and key - log-sum-exp; top_k_priority_estimates then turns
// k + 1 of those into k estimates.
struct TopKLogSoftmaxState {
  float* max;
  float* sum;
  float* values;
  int32_t* ids;
  int64_t rows;
  int64_t k;
  bool sampled = false;
  uint64_t seed = 0;
  int64_t first_row_key = 0;
};

// Resets the state: max = -inf, sum = 0, every slot empty. Supported k: 1..kMaxTopK.
void top_k_log_softmax_begin(const TopKLogSoftmaxState& state, void* stream);

// logits: device f32 [rows, cols] with row stride ld (>= cols); its columns are vocabulary ids
// first_col .. first_col + cols - 1. cols == 0 is a no-op.
void top_k_log_softmax_update(const TopKLogSoftmaxState& state, const float* logits, int64_t ld,
                              int64_t cols, int64_t first_col, void* stream);

// ids_out i32 [rows, k], log_probs_out f32 [rows, k] sorted most likely first (ties lower id
// first), log_sum_exp_out f32 [rows] (may be null). Requires that at least k columns were seen in
// total; slots never filled come out last as id -1 with log-prob -inf. The state is left as is.
void top_k_log_softmax_finish(const TopKLogSoftmaxState& state, int32_t* ids_out,
                              float* log_probs_out, float* log_sum_exp_out, void* stream);

// The priority-sampling estimates of `rows` rows (priority_sampling.hpp, priority_estimates_row):
// ids [rows, n], key_lp [rows, n] as finish wrote them for a sampled state of n slots (n = k + 1,
// or n = k when the vocabulary has only k ids); row r uses the row key first_row_key + r.
// Writes ids_out i32 [rows, k] and log_probs_out f32 [rows, k]. Device pointers; n <= kMaxTopK.
void top_k_priority_estimates(const int32_t* ids, const float* key_lp, int64_t rows, int64_t n,
                              int64_t k, uint64_t seed, int64_t first_row_key, int32_t* ids_out,
                              float* log_probs_out, void* stream);

}  // namespace refinery::backend::cuda
