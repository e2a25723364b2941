#pragma once
// The seam between the engine and everything that measures a model (eval, logits, distillation):
// a causal language model that scores token sequences. Implementations: the Transformer over a
// backend (src/engine/model), an offline logit cache (src/engine/io), test doubles.
//
// Logits are delivered in chunks of consecutive positions so that no caller ever holds
// [tokens x vocab] floats at once (DESIGN §1.4): a 4096-token window of a 129k vocabulary would be
// 2 GiB in f32.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "engine/backend/top_k_sampling.hpp"

namespace refinery::model {

// Receives logits for positions [first_position, first_position + rows): row-major f32
// [rows, vocab_size]. The pointer is valid only during the call.
using LogitsConsumer = std::function<void(int64_t first_position, const float* logits, int64_t rows)>;
// Receives, for positions [first_position, first_position + rows), the k most likely next tokens
// (indices, most likely first; ties: lower id first) and their log-probabilities: row-major
// [rows, k] each. The pointers are valid only during the call.
using TopKConsumer = std::function<void(int64_t first_position, const int32_t* indices,
                                        const float* log_probs, int64_t rows)>;

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  virtual int64_t vocab_size() const = 0;
  // The longest sequence `score` accepts (the model's context length).
  virtual int64_t max_sequence_length() const = 0;
  // Runs `tokens` (one sequence, starting at position 0, no cache carried over) and delivers the
  // logits of every position, in order, in chunks of at most `max_chunk_rows` rows.
  virtual void score(std::span<const int32_t> tokens, const LogitsConsumer& consume,
                     int64_t max_chunk_rows = 256) = 0;
  // Like score, but delivers only the k most likely next tokens of every position with their
  // log-softmax over the whole vocabulary (0 < k <= vocab). This default runs score and
  // eval::top_k_log_probs; the Transformer fuses it into the LM head on its backend.
  virtual void score_top_k(std::span<const int32_t> tokens, int64_t k,
                           const TopKConsumer& consume, int64_t max_chunk_rows = 256);
  // `sequences` independent windows of equal length concatenated in `tokens`, scored like
  // score_top_k but together where the implementation can (the Transformer: one batched forward,
  // larger GEMMs). Rows arrive in order with positions counted over the concatenation, and no
  // chunk crosses a window boundary. This default scores one window at a time.
  // With sampling.enabled every row holds a priority sample instead of the top k (backend/
  // priority_sampling.hpp); row i of `tokens` uses the row key sampling.first_row_key + i.
  virtual void score_top_k_batch(std::span<const int32_t> tokens, int64_t sequences, int64_t k,
                                 const TopKConsumer& consume, int64_t max_chunk_rows = 256,
                                 const backend::TopKSampling& sampling = {});
};

struct LanguageModelOptions {
  std::string device = "cpu";  // "cpu" or "cuda"
  int threads = 0;             // CPU threads; 0 = all cores (OpenMP default)
  // The run's shape, for the GPU memory check before loading (memory_estimate.hpp): the longest
  // sequence scored and the top-k of score_top_k (0: full logits).
  int64_t sequence_length = 2048;
  int64_t batch = 1;  // windows per forward (score_top_k_batch)
  int64_t top_k = 0;
};

// Loads a Hugging Face model directory into the engine (defined with the Transformer, in
// src/engine/model/). User errors for a directory that is not a supported model.
std::unique_ptr<LanguageModel> open_language_model(const std::filesystem::path& model_dir,
                                                   const LanguageModelOptions& options = {});

}  // namespace refinery::model
