// ModelOptimizer: AdamW on the training device through Backend::adamw_update_many.
#include "engine/train/optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/core/error.hpp"

namespace refinery::train {

std::vector<int> ModelOptimizer::owners(const ParameterSet& params, int world) {
  REFINERY_CHECK(world >= 1, "optimizer shards: world ", world);
  std::vector<int64_t> load(static_cast<std::size_t>(world), 0);
  std::vector<int> owner;
  for (const Parameter& p : params.params()) {
    const auto least = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner.push_back(least);
    load[static_cast<std::size_t>(least)] += p.numel();
  }
  return owner;
}

ModelOptimizer::ModelOptimizer(ParameterSet& params, backend::Backend& backend,
                               AdamWOptions options, OptimizerShard shard)
    : params_(params), backend_(backend), options_(options), shard_(std::move(shard)) {
  options_.validate();
  REFINERY_CHECK(shard_.rank >= 0 && shard_.rank < shard_.world, "optimizer shard rank ",
                 shard_.rank, " of ", shard_.world);
  owner_ = owners(params_, shard_.world);
  for (std::size_t i = 0; i < params_.params().size(); ++i) {
    const Parameter& p = params_.params()[i];
    Tensor m, v;
    if (p.trainable && owns(i)) {
      m = backend_.empty(DType::kF32, p.shape);
      v = backend_.empty(DType::kF32, p.shape);
      backend_.fill_zero(m);
      backend_.fill_zero(v);
    }
    exp_avg_.push_back(m);
    exp_avg_sq_.push_back(v);
  }
}

double ModelOptimizer::clip(double max_norm) {
  // Each rank measures the gradients of its own parameters (after the gradient reduction every
  // rank holds the same full gradients); the partial sums are added over the ranks.
  // One multi-tensor op: on the CPU its default is the loop Σ sum_squares(grad) in parameter
  // order (bitwise the per-tensor sum, so CPU trajectories are unchanged); on CUDA one launch and
  // one download, whose fixed chunked order may differ from that loop by rounding only
  // (deterministic run to run either way).
  std::vector<Tensor> grads;
  for (std::size_t i = 0; i < params_.params().size(); ++i)
    if (params_.params()[i].trainable && owns(i)) grads.push_back(params_.params()[i].grad);
  double sum = backend_.sum_squares_many(grads);
  if (shard_.all_reduce_sum) sum = shard_.all_reduce_sum(sum);
  const double norm = std::sqrt(sum);
  clip_coefficient_ = 1.0;
  if (max_norm > 0.0 && std::isfinite(norm))
    clip_coefficient_ = std::min(1.0, max_norm / (norm + 1e-6));
  return norm;
}

void ModelOptimizer::step(double lr) {
  if (!std::isfinite(lr) || lr < 0.0)
    throw_user_error("AdamW: the learning rate must be a finite number >= 0, found ", lr);
  ++step_count_;
  // The scalars exactly as AdamW::step forms them (adamw.cpp), per parameter group.
  const double t = static_cast<double>(step_count_);
  const double bias_correction1 = 1.0 - std::pow(options_.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(options_.beta2, t);
  backend::AdamWScalars s;
  s.lerp_weight = static_cast<float>(1.0 - options_.beta1);
  s.beta2 = static_cast<float>(options_.beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - options_.beta2);
  s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(options_.eps);
  s.neg_step_size = static_cast<float>(-(lr / bias_correction1));
  s.grad_scale = static_cast<float>(clip_coefficient_);
  s.decay_factor = static_cast<float>(1.0 - lr * options_.weight_decay);
  // All owned trainable parameters in one multi-tensor update (one launch on CUDA; bitwise the
  // per-tensor adamw_update loop on every backend). Only the decay flag differs per tensor.
  auto& ps = params_.params();
  std::vector<backend::AdamWTensors> update;
  for (std::size_t i = 0; i < ps.size(); ++i) {
    Parameter& p = ps[i];
    if (!p.trainable || !owns(i)) continue;
    // The op works on flat [n] tensors.
    const int64_t n = p.numel();
    backend::AdamWTensors t;
    t.master = p.master.view({n});
    t.grad = p.grad.view({n});
    t.exp_avg = exp_avg_[i].view({n});
    t.exp_avg_sq = exp_avg_sq_[i].view({n});
    if (p.compute.data() != p.master.data()) t.compute = p.compute.view({n});
    t.decay = p.decay && options_.weight_decay != 0.0;
    update.push_back(std::move(t));
  }
  backend_.adamw_update_many(update, s);
  clip_coefficient_ = 1.0;
}

void ModelOptimizer::save(const std::filesystem::path& file) const {
  std::vector<Tensor> host;  // keeps the downloaded arrays alive while writing
  std::vector<AdamWStateView> views;
  const auto& ps = params_.params();
  for (std::size_t i = 0; i < ps.size(); ++i) {
    if (!ps[i].trainable || !owns(i)) continue;
    const int64_t n = ps[i].numel();
    Tensor m = backend_.download(ps[i].master).view({n});  // only read by the writer
    Tensor a = backend_.download(exp_avg_[i]).view({n});  // only read by the writer
    Tensor v = backend_.download(exp_avg_sq_[i]).view({n});  // only read by the writer
    views.push_back({ps[i].name, n, m.mutable_data<float>(), a.mutable_data<float>(),
                     v.mutable_data<float>()});
    host.insert(host.end(), {m, a, v});
  }
  write_adamw_state(file, views, step_count_, options_);
}

void ModelOptimizer::load(const std::filesystem::path& file) {
  std::vector<Tensor> host;
  std::vector<AdamWStateView> views;
  std::vector<std::size_t> index;
  auto& ps = params_.params();
  for (std::size_t i = 0; i < ps.size(); ++i) {
    if (!ps[i].trainable || !owns(i)) continue;
    const int64_t n = ps[i].numel();
    Tensor m = Tensor::empty(DType::kF32, {n}), a = Tensor::empty(DType::kF32, {n}),
           v = Tensor::empty(DType::kF32, {n});
    views.push_back({ps[i].name, n, m.mutable_data<float>(), a.mutable_data<float>(),
                     v.mutable_data<float>()});
    host.insert(host.end(), {m, a, v});
    index.push_back(i);
  }
  step_count_ = read_adamw_state(file, views, options_);
  for (std::size_t j = 0; j < index.size(); ++j) {
    const std::size_t i = index[j];
    ps[i].master.copy_from(host[3 * j].view(ps[i].shape));
    exp_avg_[i].copy_from(host[3 * j + 1].view(ps[i].shape));
    exp_avg_sq_[i].copy_from(host[3 * j + 2].view(ps[i].shape));
  }
  params_.refresh_compute(backend_);
}

}  // namespace refinery::train
