#pragma once
// Keys and values of every layer for the positions run so far, so that decoding a token costs one
// position of compute. Layout per layer: keys [capacity, kv_heads, dk], values [capacity, kv_heads,
// dv] (MLA: kv_heads = heads, dk = nope + rope, i.e. the expanded keys; not the compressed latent).
// Capacity grows by reallocation when a forward needs more positions.

#include <cstdint>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/model/model_config.hpp"

namespace refinery::model {

class KvCache {
 public:
  KvCache(backend::Backend& backend, const ModelConfig& config, int64_t capacity);

  int64_t length() const { return length_; }  // positions filled
  int64_t capacity() const { return capacity_; }
  // Makes room for `more` positions after length() (keeps the filled ones).
  void reserve_more(int64_t more);
  // Full per-layer buffers; rows [0, length()) are valid.
  Tensor& keys(int layer) { return keys_.at(static_cast<std::size_t>(layer)); }
  Tensor& values(int layer) { return values_.at(static_cast<std::size_t>(layer)); }
  // Marks `n` more positions as filled (after every layer wrote them).
  void advance(int64_t n) { length_ += n; }
  void clear() { length_ = 0; }

 private:
  backend::Backend* backend_;
  int64_t kv_heads_, dk_, dv_;
  int64_t capacity_ = 0;
  int64_t length_ = 0;
  std::vector<Tensor> keys_, values_;
};

}  // namespace refinery::model
