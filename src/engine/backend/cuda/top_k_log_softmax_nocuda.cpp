// The chunked log-softmax + top-k in a build without the CUDA backend (-DREFINERY_CUDA=OFF or no
// nvcc): there is no device memory to work on, so every call is a bug of the caller.
#include "engine/backend/cuda/top_k_log_softmax.hpp"
#include "engine/core/error.hpp"

namespace refinery::backend::cuda {

namespace {

[[noreturn]] void no_cuda(const char* op) {
  throw_internal_error(op, ": this build has no CUDA backend (configured without nvcc); the "
                           "caller must not reach GPU code");
}

}  // namespace

void top_k_log_softmax_begin(const TopKLogSoftmaxState&, void*) {
  no_cuda("top_k_log_softmax_begin");
}

void top_k_log_softmax_update(const TopKLogSoftmaxState&, const float*, int64_t, int64_t, int64_t,
                              void*) {
  no_cuda("top_k_log_softmax_update");
}

void top_k_log_softmax_finish(const TopKLogSoftmaxState&, int32_t*, float*, float*, void*) {
  no_cuda("top_k_log_softmax_finish");
}

void top_k_priority_estimates(const int32_t*, const float*, int64_t, int64_t, int64_t, uint64_t,
                              int64_t, int32_t*, float*, void*) {
  no_cuda("top_k_priority_estimates");
}

}  // namespace refinery::backend::cuda
