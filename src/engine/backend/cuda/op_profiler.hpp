#pragma once
// GPU time per backend op, for finding where a forward spends its time (nsys is not everywhere).
// Enabled with REFINERY_PROFILE=1: every public op of the CUDA backend opens an OpTimer, which
// records a CUDA event pair around the op's work on the backend's stream; nested ops (linear inside
// the MoE fallback) count toward the outermost op only, so the parts sum to the GPU busy time. The
// table (op, calls, total ms, share) goes to stderr when the backend is destroyed; wall time minus
// the total is time the GPU waited for the host. Disabled, an OpTimer costs one branch.
#include <cuda_runtime.h>

#include <map>
#include <string>
#include <vector>

namespace refinery::backend::cuda {

class OpProfiler {
 public:
  explicit OpProfiler(bool enabled) : enabled_(enabled) {}
  ~OpProfiler() { report(); }
  // Prints the table to stderr once (if enabled and anything was timed); call before the stream
  // the events were recorded on is destroyed.
  void report();
  // Forgets everything timed so far.
  void reset();
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;
  bool enabled() const { return enabled_; }
  // Outermost op only: begin returns false (and records nothing) inside another timed op.
  bool begin(cudaStream_t stream, cudaEvent_t* start);
  void end(cudaStream_t stream, cudaEvent_t start, std::string op);

 private:
  struct Pending {
    cudaEvent_t start, stop;
    std::string op;
  };
  struct Totals {
    double ms = 0;
    long calls = 0;
  };
  void drain();  // waits for the recorded events and adds them up
  bool enabled_;
  bool reported_ = false;
  int depth_ = 0;
  std::vector<Pending> pending_;
  std::map<std::string, Totals> totals_;
};

// RAII: times the enclosing op when profiling is on.
class OpTimer {
 public:
  OpTimer(OpProfiler& profiler, cudaStream_t stream, std::string op)
      : profiler_(profiler), stream_(stream), op_(std::move(op)) {
    active_ = profiler_.enabled() && profiler_.begin(stream_, &start_);
  }
  ~OpTimer() {
    if (profiler_.enabled()) profiler_.end(stream_, active_ ? start_ : nullptr, std::move(op_));
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  OpProfiler& profiler_;
  cudaStream_t stream_;
  std::string op_;
  cudaEvent_t start_ = nullptr;
  bool active_ = false;
};

}  // namespace refinery::backend::cuda
