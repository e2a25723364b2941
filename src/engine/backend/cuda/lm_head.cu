// log_softmax_top_k on the GPU: the LM head fused with a vocabulary-chunked log-softmax + top-k.
// For each block of rows, the vocabulary is walked in chunks of kVocabChunk ids: one bf16 GEMM
// writes the chunk's logits f32 [rows, chunk] into a scratch, and top_k_log_softmax_update folds
// them into a running per-row state (max, Σexp, best k). So the largest logits buffer is
// [kRowBlock, kVocabChunk] f32 (256 MiB), never [tokens, vocab]. A priority sample
// (priority_sampling.hpp) ranks by noisy keys, keeps k + 1 and turns them into k estimates.
#include <algorithm>

#include "engine/backend/cuda/kernel_util.cuh"
#include "engine/backend/cuda/top_k_log_softmax.hpp"

namespace refinery::backend::cuda {

namespace {
constexpr int64_t kRowBlock = 4096;
constexpr int64_t kVocabChunk = 16384;
}  // namespace

void CudaBackend::log_softmax_top_k(const Tensor& hidden, const LinearWeight& lm_head, int64_t k,
                                    const TopKSampling& sampling, Tensor& indices,
                                    Tensor& log_probs) {
  OpTimer timer(profiler_, stream_, "log_softmax_top_k");
  const TopKSizes sizes =
      check_log_softmax_top_k(Device::kCUDA, hidden, lm_head, k, indices, log_probs);
  const int64_t rows = sizes.rows, vocab = sizes.vocab, in = lm_head.in_features();
  REFINERY_CHECK(!lm_head.bias.defined(), "log_softmax_top_k: an LM head with a bias (",
                 lm_head.name, ") is not supported");
  if (rows == 0) return;
  const Tensor x = as_dtype(hidden, DType::kBF16, "log_softmax_top_k (hidden to bf16)");
  const int64_t block = std::min(rows, kRowBlock), chunk = std::min(vocab, kVocabChunk);
  // A priority sample keeps k + 1 keys per row (the (k+1)-th is the threshold), when there are.
  const int64_t slots = sampling.enabled ? std::min(k + 1, vocab) : k;
  Tensor logits = empty(DType::kF32, {block, chunk});
  Tensor max = empty(DType::kF32, {block}), sum = empty(DType::kF32, {block});
  Tensor values = empty(DType::kF32, {block, slots});
  Tensor ids = empty(DType::kI32, {block, slots});
  Tensor sampled_ids, sampled_keys;  // finish's output [block, slots] before the estimates
  if (sampling.enabled) {
    sampled_ids = empty(DType::kI32, {block, slots});
    sampled_keys = empty(DType::kF32, {block, slots});
  }
  Tensor weight_scratch;
  for (int64_t r0 = 0; r0 < rows; r0 += block) {
    const int64_t n = std::min(block, rows - r0);
    const TopKLogSoftmaxState state{max.mutable_data<float>(),
                                    sum.mutable_data<float>(),
                                    values.mutable_data<float>(),
                                    ids.mutable_data<int32_t>(),
                                    n,
                                    slots,
                                    sampling.enabled,
                                    sampling.seed,
                                    sampling.first_row_key + r0};
    top_k_log_softmax_begin(state, stream_);
    for (int64_t c0 = 0; c0 < vocab; c0 += chunk) {
      const int64_t cols = std::min(chunk, vocab - c0);
      const void* w = bf16_weight_rows(lm_head, c0, cols, weight_scratch);
      gemm_bf16(w, static_cast<const std::byte*>(x.data()) + r0 * in * 2, n, in, cols,
                logits.mutable_data(), CUDA_R_32F, cols);
      top_k_log_softmax_update(state, logits.data<float>(), cols, cols, c0, stream_);
    }
    if (!sampling.enabled) {
      top_k_log_softmax_finish(state, indices.mutable_data<int32_t>() + r0 * k,
                               log_probs.mutable_data<float>() + r0 * k, nullptr, stream_);
      continue;
    }
    top_k_log_softmax_finish(state, sampled_ids.mutable_data<int32_t>(),
                             sampled_keys.mutable_data<float>(), nullptr, stream_);
    top_k_priority_estimates(sampled_ids.data<int32_t>(), sampled_keys.data<float>(), n, slots, k,
                             sampling.seed, sampling.first_row_key + r0,
                             indices.mutable_data<int32_t>() + r0 * k,
                             log_probs.mutable_data<float>() + r0 * k, stream_);
  }
}

}  // namespace refinery::backend::cuda
