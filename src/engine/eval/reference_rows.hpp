#pragma once
// A reference's distributions, row by row, for the windows an evaluation scores: from another
// LanguageModel (run window by window in a helper thread, so that the two models' logits meet
// chunk by chunk and neither window is ever held whole: [seq_len x vocab] floats would be GiBs),
// or from a logit cache (read chunk by chunk; its sequences must be the evaluation's windows,
// with the same token ids).

#include <cstdint>
#include <memory>
#include <span>

#include "engine/eval/kl_divergence.hpp"
#include "engine/io/logit_cache.hpp"
#include "engine/model/language_model.hpp"

namespace refinery::eval {

class ReferenceRows {
 public:
  virtual ~ReferenceRows() = default;
  virtual int64_t vocab_size() const = 0;
  // Starts window `index` (0-based, in evaluation order) over `tokens`, which stay valid until
  // end_window()/abandon_window().
  virtual void begin_window(int64_t index, std::span<const int32_t> tokens) = 0;
  // The row of the next position (positions 0.. in order). Valid until the next call.
  virtual ReferenceRow next_row() = 0;
  // Every row of the window was taken; rethrows a failure of the reference.
  virtual void end_window() = 0;
  // Stops early (the evaluation failed); never throws.
  virtual void abandon_window() noexcept = 0;
};

std::unique_ptr<ReferenceRows> reference_from_model(model::LanguageModel& reference,
                                                    int64_t chunk_rows);
// User errors from begin_window when the cache lacks the window or holds other token ids there.
std::unique_ptr<ReferenceRows> reference_from_cache(const io::LogitCacheReader& cache,
                                                    int64_t chunk_rows);

}  // namespace refinery::eval
