#pragma once
// Private to the Transformer's .cpp files: the context of one forward call.

#include "engine/model/transformer.hpp"

namespace refinery::model {

struct Transformer::Step {
  KvCache* cache;          // null for lm_head-only calls
  int64_t first_position;  // position of the first token of this call
  int64_t tokens;          // T
  TapObserver* taps;       // may be null
};

}  // namespace refinery::model
