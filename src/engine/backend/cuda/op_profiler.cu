// OpProfiler: CUDA events around the outermost backend ops, summed per op name (op_profiler.hpp).
#include "engine/backend/cuda/op_profiler.hpp"

#include <algorithm>
#include <cstdio>

namespace refinery::backend::cuda {

namespace {
constexpr std::size_t kDrainEvery = 4096;  // event pairs kept before adding them up
}

bool OpProfiler::begin(cudaStream_t stream, cudaEvent_t* start) {
  if (depth_++ > 0) return false;
  if (cudaEventCreate(start) != cudaSuccess || cudaEventRecord(*start, stream) != cudaSuccess) {
    cudaGetLastError();
    *start = nullptr;
    return false;
  }
  return true;
}

void OpProfiler::end(cudaStream_t stream, cudaEvent_t start, std::string op) {
  --depth_;
  if (start == nullptr) return;
  cudaEvent_t stop = nullptr;
  if (cudaEventCreate(&stop) != cudaSuccess || cudaEventRecord(stop, stream) != cudaSuccess) {
    cudaGetLastError();
    cudaEventDestroy(start);
    return;
  }
  pending_.push_back({start, stop, std::move(op)});
  if (pending_.size() >= kDrainEvery) drain();
}

void OpProfiler::drain() {
  for (Pending& p : pending_) {
    float ms = 0;
    if (cudaEventSynchronize(p.stop) == cudaSuccess &&
        cudaEventElapsedTime(&ms, p.start, p.stop) == cudaSuccess) {
      Totals& t = totals_[p.op];
      t.ms += ms;
      ++t.calls;
    } else {
      cudaGetLastError();
    }
    cudaEventDestroy(p.start);
    cudaEventDestroy(p.stop);
  }
  pending_.clear();
}

void OpProfiler::reset() {
  drain();
  totals_.clear();
}

void OpProfiler::report() {
  if (!enabled_ || reported_) return;
  reported_ = true;
  drain();
  if (totals_.empty()) return;
  std::vector<std::pair<std::string, Totals>> rows(totals_.begin(), totals_.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
  double total = 0;
  for (const auto& r : rows) total += r.second.ms;
  std::fprintf(stderr, "REFINERY_PROFILE: GPU time per op (outermost ops, %.1f ms in all)\n", total);
  for (const auto& [op, t] : rows)
    std::fprintf(stderr, "  %-28s %8ld calls %10.2f ms %5.1f%%\n", op.c_str(), t.calls, t.ms,
                 100.0 * t.ms / total);
}

}  // namespace refinery::backend::cuda
