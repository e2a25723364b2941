// ParameterSet: loading, seeded initialization, device copies and saving.
#include "engine/train/parameters.hpp"

#include <cmath>
#include <random>

#include "engine/core/error.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_writer.hpp"
#include "engine/model/model_weights.hpp"

namespace refinery::train {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_norm_weight(const std::string& name) {
  return ends_with(name, "norm.weight") || ends_with(name, "layernorm.weight");
}

// FNV-1a of the name: each parameter's random stream depends on the seed and its name only.
uint64_t name_hash(const std::string& name) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ULL;
  return h;
}

// N(0, std) draws by Box-Muller over mt19937_64's 53-bit uniforms (std::normal_distribution's
// draws differ between standard libraries; these do not).
std::vector<float> normal_values(int64_t n, double std_dev, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto uniform = [&rng] { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; };
  std::vector<float> v(static_cast<std::size_t>(n));
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  for (int64_t i = 0; i < n; i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uniform())), a = kTwoPi * uniform();
    v[static_cast<std::size_t>(i)] = static_cast<float>(std_dev * r * std::cos(a));
    if (i + 1 < n) v[static_cast<std::size_t>(i + 1)] = static_cast<float>(std_dev * r * std::sin(a));
  }
  return v;
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

int64_t Parameter::numel() const { return element_count(shape); }

void ParameterSet::add(std::string name, std::vector<int64_t> shape,
                       const std::vector<float>& values, backend::Backend& be) {
  Parameter p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.trainable = !ends_with(p.name, "e_score_correction_bias");
  p.decay = p.shape.size() >= 2;
  REFINERY_CHECK(static_cast<int64_t>(values.size()) == p.numel(), p.name);
  p.master = be.upload(Tensor::copy_of(DType::kF32, p.shape, values.data()));
  if (be.activation_dtype() == DType::kF32) {
    p.compute = p.master;
  } else {
    p.compute = be.empty(be.activation_dtype(), p.shape);
    be.convert(p.master, p.compute);
  }
  p.grad = be.empty(DType::kF32, p.shape);
  be.fill_zero(p.grad);
  params_.push_back(std::move(p));
}

ParameterSet ParameterSet::load(const std::filesystem::path& model_dir,
                                const model::ModelConfig& config, backend::Backend& be) {
  const io::Checkpoint ckpt = io::Checkpoint::open(model_dir);
  ParameterSet set;
  for (const auto& [name, shape] : model::ModelWeights::expected_tensors(config, &ckpt)) {
    const io::TensorEntry& e = *ckpt.at(name).entry;
    if (e.dtype != DType::kF32 && e.dtype != DType::kBF16 && e.dtype != DType::kF16)
      throw_user_error("tensor ", name, " in ", ckpt.source().string(), " is ",
                       dtype_name(e.dtype),
                       ": training starts from f32, bf16 or f16 weights; dequantize the "
                       "checkpoint first or start from its unquantized release");
    std::vector<float> values(static_cast<std::size_t>(element_count(shape)));
    convert_to_f32(e.dtype, ckpt.bytes(name).data(), values.data(), values.size());
    set.add(name, shape, values, be);
  }
  return set;
}

ParameterSet ParameterSet::random_init(const model::ModelConfig& config, double initializer_range,
                                       uint64_t seed, backend::Backend& be) {
  if (!(initializer_range > 0.0) || !std::isfinite(initializer_range))
    throw_user_error("initializer_range must be a positive number, found ", initializer_range);
  ParameterSet set;
  for (const auto& [name, shape] : model::ModelWeights::expected_tensors(config)) {
    const int64_t n = element_count(shape);
    std::vector<float> values;
    if (is_norm_weight(name))
      values.assign(static_cast<std::size_t>(n), 1.0f);
    else if (ends_with(name, ".bias") || ends_with(name, "e_score_correction_bias"))
      values.assign(static_cast<std::size_t>(n), 0.0f);
    else
      values = normal_values(n, initializer_range, seed ^ name_hash(name));
    set.add(name, shape, values, be);
  }
  return set;
}

Parameter* ParameterSet::find(const std::string& name) {
  for (auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

int64_t ParameterSet::total_numel() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.numel();
  return n;
}

std::map<std::string, Tensor> ParameterSet::compute_map() const {
  std::map<std::string, Tensor> m;
  for (const auto& p : params_) m.emplace(p.name, p.compute);
  return m;
}

std::map<std::string, Tensor> ParameterSet::grad_map() const {
  std::map<std::string, Tensor> m;
  for (const auto& p : params_) m.emplace(p.name, p.grad);
  return m;
}

void ParameterSet::zero_grad(backend::Backend& be) {
  for (auto& p : params_) be.fill_zero(p.grad);
  pending_.assign(params_.size(), false);
}

void ParameterSet::defer_zero_grad(backend::Backend& be) {
  claimable_.resize(params_.size(), false);
  pending_.assign(params_.size(), false);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    if (claimable_[i])
      pending_[i] = true;
    else
      be.fill_zero(params_[i].grad);
  }
}

backend::GradWrite ParameterSet::claim_grad(const Tensor& grad) {
  if (!grad.defined()) return backend::GradWrite::kAdd;
  claimable_.resize(params_.size(), false);
  pending_.resize(params_.size(), false);
  // A linear scan by data pointer: a few hundred parameters, one call per linear per step.
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const Tensor& g = params_[i].grad;
    if (g.data() != grad.data() || g.numel() != grad.numel()) continue;
    claimable_[i] = true;
    if (!pending_[i]) return backend::GradWrite::kAdd;
    pending_[i] = false;
    return backend::GradWrite::kOverwrite;
  }
  return backend::GradWrite::kAdd;  // a view of part of a gradient: plain accumulation
}

void ParameterSet::finish_pending(backend::Backend& be) {
  for (std::size_t i = 0; i < pending_.size(); ++i)
    if (pending_[i]) {
      be.fill_zero(params_[i].grad);
      pending_[i] = false;
    }
}

void ParameterSet::refresh_compute(backend::Backend& be) {
  for (auto& p : params_)
    if (p.compute.data() != p.master.data()) be.convert(p.master, p.compute);
}

void ParameterSet::save_weights(const std::filesystem::path& dir, DType dtype,
                                backend::Backend& be) const {
  if (dtype != DType::kF32 && dtype != DType::kBF16)
    throw_user_error("weights are saved as f32 or bf16, not ", dtype_name(dtype));
  std::vector<Tensor> host;  // keeps the converted bytes alive until written
  std::vector<io::TensorToWrite> tensors;
  for (const auto& p : params_) {
    const Tensor f32 = be.download(p.master);
    Tensor out = f32;
    if (dtype != DType::kF32) {
      out = Tensor::empty(dtype, p.shape);
      convert_from_f32(dtype, f32.data<float>(), out.mutable_data(),
                       static_cast<std::size_t>(p.numel()));
    }
    host.push_back(out);
    io::TensorToWrite t;
    t.name = p.name;
    t.dtype = dtype;
    t.shape = p.shape;
    t.data = std::span<const std::byte>(static_cast<const std::byte*>(out.data()), out.nbytes());
    tensors.push_back(std::move(t));
  }
  io::write_checkpoint(dir, tensors);
}

}  // namespace refinery::train
