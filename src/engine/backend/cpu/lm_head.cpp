// log_softmax_top_k on the CPU: the LM head in chunks of rows (f32 [chunk, vocab] at a time), then
// per row eval::top_k_log_probs or eval::priority_sample_log_probs (the definitions the CUDA kernel
// is tested against).
#include <algorithm>

#include "engine/backend/cpu/cpu_backend.hpp"
#include "engine/backend/op_checks.hpp"
#include "engine/eval/log_softmax.hpp"

namespace refinery::backend::cpu {

namespace {
constexpr int64_t kChunkRows = 64;  // 64 x 129k vocabulary = 33 MB of f32 logits at a time
}  // namespace

void CpuBackend::log_softmax_top_k(const Tensor& hidden, const LinearWeight& lm_head, int64_t k,
                                   const TopKSampling& sampling, Tensor& indices,
                                   Tensor& log_probs) {
  const TopKSizes sizes =
      check_log_softmax_top_k(Device::kCPU, hidden, lm_head, k, indices, log_probs);
  const int64_t vocab = sizes.vocab;
  Tensor logits = empty(DType::kF32, {std::min(kChunkRows, std::max<int64_t>(sizes.rows, 1)), vocab});
  for (int64_t r0 = 0; r0 < sizes.rows; r0 += kChunkRows) {
    const int64_t n = std::min(kChunkRows, sizes.rows - r0);
    Tensor chunk = logits.slice(0, n);
    linear(hidden.slice(r0, r0 + n), lm_head, chunk);
    const float* l = chunk.data<float>();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) {
      int32_t* ids = indices.mutable_data<int32_t>() + (r0 + r) * k;
      float* lps = log_probs.mutable_data<float>() + (r0 + r) * k;
      if (sampling.enabled)
        eval::priority_sample_log_probs(l + r * vocab, vocab, k, sampling.seed,
                                        sampling.first_row_key + r0 + r, ids, lps);
      else
        eval::top_k_log_probs(l + r * vocab, vocab, k, ids, lps);
    }
  }
}

}  // namespace refinery::backend::cpu
