#pragma once
// AdamW with fp32 master weights, as torch.optim.AdamW (decoupled weight decay, bias correction,
// amsgrad off), on plain arrays so that any backend can drive it.
//
// The optimizer owns, per registered parameter tensor of `numel` elements, three fp32 arrays
// [numel]: the master weights, exp_avg (first moment) and exp_avg_sq (second moment). The model
// computes with bf16 copies made by copy_to_bf16; gradients come back as fp32 arrays.
//
// One step with learning rate lr, t = step_count() after the increment, per element:
//   p  *= 1 - lr * weight_decay
//   m   = lerp(m, g, 1 - beta1)           v = fma((1 - beta2) * g, g, beta2 * v)
//   p  -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Scalars are formed in double and applied in float, element arithmetic is fp32, in the order
// torch's single-tensor CPU path uses; elements are independent, so threads do not change results.
// Agreement with torch fp32 is not bitwise (about 95% of elements are identical after 20 steps; the
// rest differ by a few ulps of the update size, from fma contraction and torch's vector kernels).
//
// State files (save/load) are safetensors: per parameter "master/<name>", "exp_avg/<name>",
// "exp_avg_sq/<name>" (F32, shape [numel]), in registration order, and __metadata__ with
// "refinery_optimizer": "adamw", "step_count", and the options (informational: loading with other
// options warns and keeps the current ones, since changing e.g. weight decay on resume is legitimate).

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace refinery::train {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;

  // Throws a user error naming the field: betas must lie in [0, 1), eps and weight_decay >= 0.
  void validate() const;
};

class AdamW {
 public:
  explicit AdamW(AdamWOptions options = {});

  // Registers a parameter tensor of `numel` elements (>= 0) and returns its index. Master weights
  // and moments start at zero: fill the weights through master(index). Names must be unique and
  // non-empty (user error otherwise); they key the saved state.
  std::size_t add_parameter(std::string name, int64_t numel);

  std::size_t num_parameters() const { return params_.size(); }
  const std::string& name(std::size_t i) const;
  int64_t numel(std::size_t i) const;
  std::span<float> master(std::size_t i);
  std::span<const float> master(std::size_t i) const;
  std::span<const float> exp_avg(std::size_t i) const;
  std::span<const float> exp_avg_sq(std::size_t i) const;

  // Writes the master weights of parameter i as bf16 bit patterns (round to nearest even) to
  // out[0 .. numel(i)).
  void copy_to_bf16(std::size_t i, uint16_t* out) const;

  // One update. grads[i] points to numel(i) fp32 gradients of parameter i (one per registered
  // parameter, in order; already averaged over accumulation steps and clipped). lr >= 0 and finite.
  void step(double lr, const std::vector<const float*>& grads);

  // Steps taken so far (torch's state["step"]).
  int64_t step_count() const { return step_count_; }
  const AdamWOptions& options() const { return options_; }

  // Saves the whole state atomically (see the header comment for the layout).
  void save(const std::filesystem::path& file) const;
  // Restores a state saved for the same parameters (same names, sizes and order). Throws a user
  // error naming the file and the tensor for a missing, truncated or malformed file, another
  // optimizer's state, or a parameter that is missing, extra or of another size; on error this
  // object is unchanged.
  void load(const std::filesystem::path& file);

 private:
  struct Parameter {
    std::string name;
    std::vector<float> master;      // [numel]
    std::vector<float> exp_avg;     // [numel]
    std::vector<float> exp_avg_sq;  // [numel]
  };
  const Parameter& at(std::size_t i) const;

  AdamWOptions options_;
  std::vector<Parameter> params_;
  int64_t step_count_ = 0;
};

// The state file of AdamW::save, for any holder of the arrays (ModelOptimizer keeps them on a
// device and passes host copies). One view per parameter: its name and numel f32 values each.
struct AdamWStateView {
  std::string name;
  int64_t numel = 0;
  float* master = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
};
void write_adamw_state(const std::filesystem::path& file, const std::vector<AdamWStateView>& params,
                       int64_t step_count, const AdamWOptions& options);
// Validates the whole file against `params` (names, sizes; user errors as AdamW::load), then
// fills the arrays; returns the saved step count. On error nothing has been written.
int64_t read_adamw_state(const std::filesystem::path& file, const std::vector<AdamWStateView>& params,
                         const AdamWOptions& options);

}  // namespace refinery::train
