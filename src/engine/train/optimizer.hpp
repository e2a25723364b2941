#pragma once
// AdamW over a ParameterSet on its device (the backend's adamw_update_many op: one launch for all
// tensors on CUDA), with global-norm gradient clipping. Per element it is exactly
// train::AdamW::step (adamw.hpp), which matches torch.optim.AdamW in fp32; the moments live next
// to the parameters (f32 [shape] each).
//
// Clipping is folded into the update: clip() measures the global L2 norm of all trainable
// gradients (Backend::sum_squares_many, deterministic; on the CPU bitwise the per-tensor sum in
// parameter order, on CUDA a fixed chunked order that may differ from it by rounding) and sets
// the coefficient min(1, max_norm / (norm + 1e-6)) (torch's clip_grad_norm_) that the next step()
// multiplies every gradient by, in fp32, as torch's in-place scaling does.
//
// State file (save/load): safetensors with, per trainable parameter, "master/<name>",
// "exp_avg/<name>", "exp_avg_sq/<name>" (F32, the parameter's shape), and __metadata__
// {"refinery_optimizer": "adamw", "step_count": N}. Loading restores the master weights exactly
// (and refreshes the compute copies), so a resumed run continues bit for bit on the CPU.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

#include "engine/backend/backend.hpp"
#include "engine/train/adamw.hpp"
#include "engine/train/parameters.hpp"

namespace refinery::train {

// Sharding of the optimizer state over data-parallel ranks (ZeRO-1, the way to a 7B student on
// several GPUs: docs/PLAN-7B.md). Rank r owns the parameters that owner_of() gives it — whole
// tensors, balanced greedily by size in registration order — and keeps moments and steps only for
// those. The collective steps are callbacks so that this class needs no NCCL: `all_reduce_sum`
// adds a double over the ranks (the squared gradient norm); the trainer reduces gradients before
// step() and all-gathers the owned parameters after it (NCCL, a later issue). With world == 1
// (the default) this is plain AdamW.
struct OptimizerShard {
  int rank = 0;
  int world = 1;
  std::function<double(double)> all_reduce_sum;  // null: identity (one rank)
};

class ModelOptimizer {
 public:
  ModelOptimizer(ParameterSet& params, backend::Backend& backend, AdamWOptions options,
                 OptimizerShard shard = {});
  // The rank that owns each parameter (size() == params.params().size()).
  static std::vector<int> owners(const ParameterSet& params, int world);
  bool owns(std::size_t parameter) const { return owner_[parameter] == shard_.rank; }

  // The global L2 norm of the trainable gradients; with max_norm > 0 the next step() scales them
  // by min(1, max_norm / (norm + 1e-6)). A non-finite norm is returned as is (the caller skips
  // the step and zeroes the gradients).
  double clip(double max_norm);
  // One AdamW update of every trainable parameter at learning rate lr; refreshes the compute
  // copies. Resets the clip coefficient to 1.
  void step(double lr);
  int64_t step_count() const { return step_count_; }
  void set_step_count(int64_t n) { step_count_ = n; }

  void save(const std::filesystem::path& file) const;
  // User error naming the file and tensor for a missing, truncated or foreign state, or one made
  // for other parameters.
  void load(const std::filesystem::path& file);

 private:
  ParameterSet& params_;
  backend::Backend& backend_;
  AdamWOptions options_;
  OptimizerShard shard_;
  std::vector<int> owner_;                    // per parameter
  std::vector<Tensor> exp_avg_, exp_avg_sq_;  // per parameter (undefined when not trainable or
                                              // owned by another rank)
  int64_t step_count_ = 0;
  double clip_coefficient_ = 1.0;
};

}  // namespace refinery::train
