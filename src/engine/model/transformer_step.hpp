#pragma once
// Private to the Transformer's .cpp files: the context of one forward call.

#include "engine/model/transformer.hpp"

namespace refinery::model {

struct Transformer::Step {
  KvCache* cache;          // null for lm_head-only calls
  int64_t first_position;  // position of the first token of this call
  int64_t tokens;          // T
  TapObserver* taps;       // may be null
  // A batch of `segments` independent sequences of segment_length = T / segments tokens each
  // (forward_hidden_batch): each starts at position 0 and attends only to itself. 1 otherwise.
  int64_t segments = 1;
  int64_t segment_length() const { return tokens / segments; }
};

}  // namespace refinery::model
