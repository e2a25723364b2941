#include "engine/model/kv_cache.hpp"

#include <algorithm>

namespace refinery::model {

KvCache::KvCache(backend::Backend& backend, const ModelConfig& config, int64_t capacity)
    : backend_(&backend),
      kv_heads_(config.attention.num_kv_heads),
      dk_(config.attention.head_dim),
      dv_(config.attention.value_head_dim()) {
  keys_.resize(static_cast<std::size_t>(config.num_layers));
  values_.resize(static_cast<std::size_t>(config.num_layers));
  reserve_more(std::max<int64_t>(capacity, 1));
}

void KvCache::reserve_more(int64_t more) {
  const int64_t needed = length_ + more;
  if (needed <= capacity_) return;
  const int64_t capacity = std::max(needed, capacity_ * 2);
  for (std::size_t l = 0; l < keys_.size(); ++l) {
    Tensor k = backend_->empty(backend_->activation_dtype(), {capacity, kv_heads_, dk_});
    Tensor v = backend_->empty(backend_->activation_dtype(), {capacity, kv_heads_, dv_});
    if (length_ > 0) {
      k.slice(0, length_).copy_from(keys_[l].slice(0, length_));
      v.slice(0, length_).copy_from(values_[l].slice(0, length_));
    }
    keys_[l] = k;
    values_[l] = v;
  }
  capacity_ = capacity;
}

}  // namespace refinery::model
