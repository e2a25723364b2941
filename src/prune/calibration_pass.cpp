// The shared calibration loop (calibration_pass.hpp).
#include "prune/calibration_pass.hpp"

#include <algorithm>

#include "engine/core/error.hpp"

namespace refinery::prune {

CalibrationRun run_calibration(model::Transformer& model, std::span<const int32_t> tokens,
                               const CalibrationOptions& options, model::TapObserver& observer,
                               const std::function<void(int64_t)>& end_window) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) throw_user_error("the calibration data holds no tokens; give a non-empty --calib file");
  if (options.seq_len < 1) throw_user_error("--seq-len is ", options.seq_len, "; it must be >= 1");
  const int vocab = model.config().vocab_size;
  for (int64_t i = 0; i < n; ++i)
    if (tokens[static_cast<std::size_t>(i)] < 0 || tokens[static_cast<std::size_t>(i)] >= vocab)
      throw_user_error("calibration token ", i, " has id ", tokens[static_cast<std::size_t>(i)],
                       ", outside the model's vocabulary of ", vocab,
                       " tokens; the data was tokenized for another model");
  CalibrationRun run;
  run.seq_len = std::min(options.seq_len, n);
  run.windows = n / run.seq_len;
  if (options.max_tokens > 0)
    run.windows = std::min(run.windows, std::max<int64_t>(1, options.max_tokens / run.seq_len));
  for (int64_t w = 0; w < run.windows; ++w) {
    model::KvCache cache = model.make_cache(run.seq_len);
    model.forward_hidden(tokens.subspan(static_cast<std::size_t>(w * run.seq_len),
                                        static_cast<std::size_t>(run.seq_len)),
                         cache, &observer);
    if (end_window) end_window(run.seq_len);
    if (options.on_window) options.on_window((w + 1) * run.seq_len, run.windows * run.seq_len);
  }
  run.tokens = run.windows * run.seq_len;
  return run;
}

}  // namespace refinery::prune
