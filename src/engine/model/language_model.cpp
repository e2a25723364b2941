// open_language_model: the Transformer on the CPU or CUDA backend behind the LanguageModel seam.
#include "engine/model/language_model.hpp"

#include <algorithm>
#include <vector>

#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/model/memory_estimate.hpp"
#include "engine/eval/log_softmax.hpp"
#include "engine/model/transformer.hpp"

namespace refinery::model {

void LanguageModel::score_top_k(std::span<const int32_t> tokens, int64_t k,
                                const TopKConsumer& consume, int64_t max_chunk_rows) {
  const int64_t vocab = vocab_size();
  if (k <= 0 || k > vocab)
    throw_internal_error("score_top_k: k = ", k, " for a vocabulary of ", vocab);
  std::vector<int32_t> indices;
  std::vector<float> log_probs;
  score(
      tokens,
      [&](int64_t first, const float* logits, int64_t rows) {
        indices.resize(static_cast<std::size_t>(rows * k));
        log_probs.resize(indices.size());
        for (int64_t r = 0; r < rows; ++r)
          eval::top_k_log_probs(logits + r * vocab, vocab, k, indices.data() + r * k,
                                log_probs.data() + r * k);
        consume(first, indices.data(), log_probs.data(), rows);
      },
      max_chunk_rows);
}

void LanguageModel::score_top_k_batch(std::span<const int32_t> tokens, int64_t sequences,
                                      int64_t k, const TopKConsumer& consume,
                                      int64_t max_chunk_rows,
                                      const backend::TopKSampling& sampling) {
  const int64_t t = static_cast<int64_t>(tokens.size());
  if (sequences <= 0 || t % sequences != 0)
    throw_internal_error("score_top_k_batch: ", t, " tokens are not ", sequences,
                         " windows of one length");
  const int64_t length = t / sequences;
  const int64_t vocab = vocab_size();
  if (sampling.enabled) {
    if (k <= 0 || k > vocab)
      throw_internal_error("score_top_k_batch: k = ", k, " for a vocabulary of ", vocab);
    std::vector<int32_t> indices;
    std::vector<float> log_probs;
    for (int64_t b = 0; b < sequences; ++b)
      score(
          tokens.subspan(static_cast<std::size_t>(b * length), static_cast<std::size_t>(length)),
          [&](int64_t first, const float* logits, int64_t rows) {
            indices.resize(static_cast<std::size_t>(rows * k));
            log_probs.resize(indices.size());
            for (int64_t r = 0; r < rows; ++r)
              eval::priority_sample_log_probs(logits + r * vocab, vocab, k, sampling.seed,
                                              sampling.first_row_key + b * length + first + r,
                                              indices.data() + r * k, log_probs.data() + r * k);
            consume(b * length + first, indices.data(), log_probs.data(), rows);
          },
          max_chunk_rows);
    return;
  }
  for (int64_t b = 0; b < sequences; ++b)
    score_top_k(
        tokens.subspan(static_cast<std::size_t>(b * length), static_cast<std::size_t>(length)), k,
        [&](int64_t first, const int32_t* indices, const float* log_probs, int64_t rows) {
          consume(b * length + first, indices, log_probs, rows);
        },
        max_chunk_rows);
}

namespace {

class TransformerLanguageModel final : public LanguageModel {
 public:
  explicit TransformerLanguageModel(std::unique_ptr<Transformer> model)
      : model_(std::move(model)) {}

  int64_t vocab_size() const override { return model_->config().vocab_size; }
  int64_t max_sequence_length() const override { return model_->config().max_position_embeddings; }

  void score(std::span<const int32_t> tokens, const LogitsConsumer& consume,
             int64_t max_chunk_rows) override {
    const int64_t t = static_cast<int64_t>(tokens.size());
    if (t == 0) return;
    check_sequence(t, max_chunk_rows);
    KvCache cache = model_->make_cache(t);
    const Tensor hidden = model_->forward_hidden(tokens, cache);
    backend::Backend& be = model_->backend();
    for (int64_t r0 = 0; r0 < t; r0 += max_chunk_rows) {
      const int64_t rows = std::min(max_chunk_rows, t - r0);
      const Tensor logits = be.download(model_->logits(hidden.slice(r0, r0 + rows)));
      consume(r0, logits.data<float>(), rows);
    }
  }

  void score_top_k(std::span<const int32_t> tokens, int64_t k, const TopKConsumer& consume,
                   int64_t max_chunk_rows) override {
    const int64_t t = static_cast<int64_t>(tokens.size());
    if (t == 0) return;
    check_sequence(t, max_chunk_rows);
    if (k <= 0 || k > vocab_size())
      throw_internal_error("score_top_k: k = ", k, " for a vocabulary of ", vocab_size());
    score_top_k_batch(tokens, 1, k, consume, max_chunk_rows, backend::TopKSampling{});
  }

  void score_top_k_batch(std::span<const int32_t> tokens, int64_t sequences, int64_t k,
                         const TopKConsumer& consume, int64_t max_chunk_rows,
                         const backend::TopKSampling& sampling) override {
    const int64_t t = static_cast<int64_t>(tokens.size());
    if (t == 0) return;
    if (sequences <= 0 || t % sequences != 0)
      throw_internal_error("score_top_k_batch: ", t, " tokens are not ", sequences,
                           " windows of one length");
    const int64_t length = t / sequences;
    check_sequence(length, max_chunk_rows);
    if (k <= 0 || k > vocab_size())
      throw_internal_error("score_top_k: k = ", k, " for a vocabulary of ", vocab_size());
    KvCache cache = model_->make_cache(t);
    const Tensor hidden = sequences == 1 ? model_->forward_hidden(tokens, cache)
                                         : model_->forward_hidden_batch(tokens, sequences, cache);
    backend::Backend& be = model_->backend();
    Tensor indices = be.empty(DType::kI32, {t, k});
    Tensor log_probs = be.empty(DType::kF32, {t, k});
    model_->top_k(hidden, k, indices, log_probs, sampling);
    const Tensor host_indices = be.download(indices), host_log_probs = be.download(log_probs);
    for (int64_t w0 = 0; w0 < t; w0 += length)  // chunks stay inside their window
      for (int64_t r0 = w0; r0 < w0 + length; r0 += max_chunk_rows) {
        const int64_t rows = std::min(max_chunk_rows, w0 + length - r0);
        consume(r0, host_indices.data<int32_t>() + r0 * k, host_log_probs.data<float>() + r0 * k,
                rows);
      }
  }

 private:
  void check_sequence(int64_t t, int64_t max_chunk_rows) const {
    if (t > max_sequence_length())
      throw_user_error("a sequence of ", t, " tokens exceeds the model's context of ",
                       max_sequence_length(), " (max_position_embeddings in ",
                       model_->config().source, "); use a shorter --seq-len");
    if (max_chunk_rows <= 0)
      throw_internal_error("score: max_chunk_rows must be positive, found ", max_chunk_rows);
  }

 private:
  std::unique_ptr<Transformer> model_;
};

}  // namespace

std::unique_ptr<LanguageModel> open_language_model(const std::filesystem::path& model_dir,
                                                   const LanguageModelOptions& options) {
  if (options.device != "cpu" && options.device != "cuda")
    throw_user_error("unknown device \"", options.device, "\"; expected cpu or cuda");
  // CUDA: device 0 (a user error in a build without CUDA or on a machine without a GPU). Before
  // loading, the model and the run must fit the device's free memory (stop with the numbers).
  if (options.device == "cuda" && !cuda::list_devices().empty()) {
    const cuda::DeviceInfo gpu = cuda::list_devices().front();
    RunShape run;
    run.tokens_per_forward = run.cache_positions =
        std::max<int64_t>(options.sequence_length, 1) * std::max<int64_t>(options.batch, 1);
    run.top_k = options.top_k;
    const MemoryEstimate estimate =
        estimate_memory(load_model_config(model_dir),
                        checkpoint_weight_bytes(io::Checkpoint::open(model_dir)), run);
    require_memory_fits(estimate, static_cast<int64_t>(gpu.free_memory_bytes),
                        static_cast<int64_t>(gpu.total_memory_bytes), gpu.name);
  }
  auto backend = options.device == "cuda" ? backend::make_cuda_backend(0)
                                          : backend::make_cpu_backend(options.threads);
  return std::make_unique<TransformerLanguageModel>(
      Transformer::load(model_dir, std::move(backend)));
}

}  // namespace refinery::model
