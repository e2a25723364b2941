#pragma once
// What Backend::log_softmax_top_k selects per row: the k most likely ids, or a priority sample of
// k ids (the method and its estimates: priority_sampling.hpp). Kept apart from the sampling code
// so that the backend interface does not depend on it.
#include <cstdint>

namespace refinery::backend {

// What Backend::log_softmax_top_k selects: the k most likely ids (enabled == false), or a
// priority sample of k ids with their estimates (enabled == true). Row r of a call uses
// the row key first_row_key + r: callers give each position of a dataset its own key (e.g.
// window · seq_len + position) so that batching and resuming do not change the draw.
struct TopKSampling {
  bool enabled = false;
  uint64_t seed = 0;
  int64_t first_row_key = 0;
};

}  // namespace refinery::backend
