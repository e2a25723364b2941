#pragma once
// The calibration loop the prune passes share: the Transformer forward over non-overlapping windows
// of calibration tokens with a tap observer (DESIGN §3 Taps). The importance pass
// (importance.cpp) runs the same loop with its own observer; the MoE-to-dense routing statistics
// (to_dense.hpp) and the exact expert-subset search (expert_subset.hpp) run it through here.

#include <cstdint>
#include <functional>
#include <span>

#include "engine/model/transformer.hpp"
#include "prune/importance.hpp"

namespace refinery::prune {

struct CalibrationRun {
  int64_t tokens = 0;   // tokens forwarded (windows x seq_len)
  int64_t windows = 0;
  int64_t seq_len = 0;
};

// Runs `model` over windows of `tokens` as compute_importance does (each window from position 0,
// the remainder dropped, a stream shorter than one window is one window; at most
// options.max_tokens tokens in whole windows, at least one window), delivering every tap to
// `observer`. `end_window(tokens)` is called after each window with that window's token count.
// User error for an empty stream, seq_len < 1 or ids outside the vocabulary.
CalibrationRun run_calibration(model::Transformer& model, std::span<const int32_t> tokens,
                               const CalibrationOptions& options, model::TapObserver& observer,
                               const std::function<void(int64_t)>& end_window = {});

}  // namespace refinery::prune
