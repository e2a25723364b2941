#include "engine/train/adamw.hpp"

#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/io/safetensors_writer.hpp"

namespace refinery::train {
namespace {

constexpr const char* kFormatKey = "refinery_optimizer";
constexpr const char* kFormatValue = "adamw";
constexpr const char* kStepKey = "step_count";
constexpr const char* kSlots[3] = {"master/", "exp_avg/", "exp_avg_sq/"};

// Elementwise loops below this size stay on one thread (the fork costs more than the work).
constexpr int64_t kParallelMin = 1 << 15;

std::string exact(double v) {
  std::ostringstream out;
  out.precision(17);
  out << v;
  return out.str();
}

// Parses a metadata value written by save(); nullopt-like failure is a user error naming the file.
double parse_double(const std::filesystem::path& file, const std::map<std::string, std::string>& meta,
                    const std::string& key) {
  const auto it = meta.find(key);
  if (it == meta.end())
    throw_user_error(file.string(), ": optimizer state lacks the metadata entry \"", key,
                     "\"; the file was not written by refinery's AdamW::save or is damaged");
  try {
    std::size_t used = 0;
    const double v = std::stod(it->second, &used);
    if (used != it->second.size()) throw std::invalid_argument("trailing characters");
    return v;
  } catch (const std::exception&) {
    throw_user_error(file.string(), ": optimizer state metadata \"", key, "\" should be a number, found \"",
                     it->second, "\"; the file is damaged");
  }
}

}  // namespace

void AdamWOptions::validate() const {
  if (!(beta1 >= 0.0 && beta1 < 1.0))
    throw_user_error("AdamW: beta1 must lie in [0, 1), found ", beta1, " (the usual value is 0.9)");
  if (!(beta2 >= 0.0 && beta2 < 1.0))
    throw_user_error("AdamW: beta2 must lie in [0, 1), found ", beta2, " (usual values: 0.95 to 0.999)");
  if (!(eps >= 0.0) || !std::isfinite(eps))
    throw_user_error("AdamW: eps must be a finite number >= 0, found ", eps, " (the usual value is 1e-8)");
  if (!(weight_decay >= 0.0) || !std::isfinite(weight_decay))
    throw_user_error("AdamW: weight_decay must be a finite number >= 0, found ", weight_decay);
}

AdamW::AdamW(AdamWOptions options) : options_(options) { options_.validate(); }

std::size_t AdamW::add_parameter(std::string name, int64_t numel) {
  if (name.empty()) throw_user_error("AdamW: a parameter needs a non-empty name");
  if (numel < 0) throw_user_error("AdamW: parameter '", name, "' has a negative element count ", numel);
  for (const auto& p : params_)
    if (p.name == name)
      throw_user_error("AdamW: parameter '", name, "' is registered twice; every trained tensor needs a unique name");
  const auto n = static_cast<std::size_t>(numel);
  params_.push_back({std::move(name), std::vector<float>(n, 0.0f), std::vector<float>(n, 0.0f),
                     std::vector<float>(n, 0.0f)});
  return params_.size() - 1;
}

const AdamW::Parameter& AdamW::at(std::size_t i) const {
  REFINERY_CHECK(i < params_.size(), "AdamW parameter index ", i, " out of range (", params_.size(), " registered)");
  return params_[i];
}

const std::string& AdamW::name(std::size_t i) const { return at(i).name; }
int64_t AdamW::numel(std::size_t i) const { return static_cast<int64_t>(at(i).master.size()); }
std::span<float> AdamW::master(std::size_t i) {
  at(i);
  return params_[i].master;
}
std::span<const float> AdamW::master(std::size_t i) const { return at(i).master; }
std::span<const float> AdamW::exp_avg(std::size_t i) const { return at(i).exp_avg; }
std::span<const float> AdamW::exp_avg_sq(std::size_t i) const { return at(i).exp_avg_sq; }

void AdamW::copy_to_bf16(std::size_t i, uint16_t* out) const {
  const auto& p = at(i);
  REFINERY_CHECK(out != nullptr || p.master.empty(), "copy_to_bf16: null output for '", p.name, "'");
  convert_from_f32(DType::kBF16, p.master.data(), out, p.master.size());
}

void AdamW::step(double lr, const std::vector<const float*>& grads) {
  if (!std::isfinite(lr) || lr < 0.0)
    throw_user_error("AdamW: the learning rate must be a finite number >= 0, found ", lr);
  REFINERY_CHECK(grads.size() == params_.size(), "AdamW::step got ", grads.size(), " gradients for ",
                 params_.size(), " parameters");
  for (std::size_t i = 0; i < grads.size(); ++i)
    REFINERY_CHECK(grads[i] != nullptr || params_[i].master.empty(), "AdamW::step: gradient of '",
                   params_[i].name, "' is null");

  ++step_count_;
  const double t = static_cast<double>(step_count_);
  const double bias_correction1 = 1.0 - std::pow(options_.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(options_.beta2, t);
  // Scalars as torch forms them (Python floats), then held as float by the fp32 kernels.
  const bool decay = options_.weight_decay != 0.0;
  const float decay_factor = static_cast<float>(1.0 - lr * options_.weight_decay);
  const float lerp_weight = static_cast<float>(1.0 - options_.beta1);
  const float beta2 = static_cast<float>(options_.beta2);
  const float one_minus_beta2 = static_cast<float>(1.0 - options_.beta2);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = static_cast<float>(options_.eps);
  const float neg_step_size = static_cast<float>(-(lr / bias_correction1));

  for (std::size_t k = 0; k < params_.size(); ++k) {
    auto& p = params_[k];
    float* w = p.master.data();
    float* m = p.exp_avg.data();
    float* v = p.exp_avg_sq.data();
    const float* g = grads[k];
    const auto n = static_cast<int64_t>(p.master.size());
#pragma omp parallel for schedule(static) if (n > kParallelMin)
    for (int64_t i = 0; i < n; ++i) {
      float wi = w[i];
      if (decay) wi *= decay_factor;
      const float gi = g[i];
      // torch's vectorized lerp for a weight below 0.5: fma(weight, end - start, start).
      const float mi = std::fma(lerp_weight, gi - m[i], m[i]);
      float vi = v[i] * beta2;
      vi = std::fma(one_minus_beta2 * gi, gi, vi);  // one rounding for + (the CUDA op too)
      const float denom = std::sqrt(vi) / bc2_sqrt + eps;
      w[i] = wi + (neg_step_size * mi) / denom;  // addcdiv: self + value * t1 / t2
      m[i] = mi;
      v[i] = vi;
    }
  }
}

void write_adamw_state(const std::filesystem::path& file, const std::vector<AdamWStateView>& params,
                       int64_t step_count, const AdamWOptions& options) {
  std::vector<io::TensorToWrite> tensors;
  tensors.reserve(params.size() * 3);
  for (const auto& p : params) {
    const float* arrays[3] = {p.master, p.exp_avg, p.exp_avg_sq};
    for (int s = 0; s < 3; ++s)
      tensors.push_back({kSlots[s] + p.name, DType::kF32, {p.numel},
                         std::as_bytes(std::span(arrays[s], static_cast<std::size_t>(p.numel))),
                         nullptr});
  }
  const std::map<std::string, std::string> metadata = {
      {kFormatKey, kFormatValue},
      {kStepKey, std::to_string(step_count)},
      {"beta1", exact(options.beta1)},
      {"beta2", exact(options.beta2)},
      {"eps", exact(options.eps)},
      {"weight_decay", exact(options.weight_decay)},
  };
  io::write_safetensors(file, tensors, metadata);
}

int64_t read_adamw_state(const std::filesystem::path& file, const std::vector<AdamWStateView>& params,
                         const AdamWOptions& options) {
  if (!std::filesystem::exists(file))
    throw_user_error(file.string(), ": optimizer state file not found; check the checkpoint directory, or "
                     "start without resuming");
  // open() validates the whole layout: a truncated or corrupt file is a user error naming it.
  const auto st = io::SafetensorsFile::open(file);
  const auto& meta = st.metadata();
  const auto format = meta.find(kFormatKey);
  if (format == meta.end() || format->second != kFormatValue)
    throw_user_error(file.string(), ": not an AdamW optimizer state (metadata \"", kFormatKey,
                     "\" is ", format == meta.end() ? std::string("absent") : "\"" + format->second + "\"",
                     ", expected \"", kFormatValue, "\"); pass the optimizer file that AdamW::save wrote");
  const double step = parse_double(file, meta, kStepKey);
  if (!(step >= 0.0) || step != std::floor(step) || step > 9.0e15)
    throw_user_error(file.string(), ": metadata \"", kStepKey, "\" must be a non-negative integer, found \"",
                     meta.at(kStepKey), "\"; the file is damaged");

  // Validate everything before touching the state (all-or-nothing).
  std::vector<const io::TensorEntry*> found;
  found.reserve(params.size() * 3);
  for (const auto& p : params) {
    for (const char* slot : kSlots) {
      const std::string key = slot + p.name;
      const io::TensorEntry* e = st.find(key);
      if (e == nullptr)
        throw_user_error(file.string(), ": optimizer state has no tensor '", key, "' for parameter '", p.name,
                         "' (", p.numel, " elements); it was saved for a different model or set of "
                         "trained parameters");
      if (e->dtype != DType::kF32 || e->shape != std::vector<int64_t>{p.numel})
        throw_user_error(file.string(), ": tensor '", key, "' is ", dtype_name(e->dtype), " with ",
                         e->num_elements(), " elements in ", e->shape.size(),
                         " dimension(s); expected F32 of shape [", p.numel, "] for parameter '", p.name,
                         "'; the state was saved for a model of another shape");
      found.push_back(e);
    }
  }
  if (st.tensors().size() != found.size()) {
    std::string extra;
    for (const auto& e : st.tensors()) {
      bool known = false;
      for (const auto* f : found) known = known || f == &e;
      if (!known) {
        extra = e.name;
        break;
      }
    }
    throw_user_error(file.string(), ": optimizer state holds ", st.tensors().size(), " tensors, expected ",
                     found.size(), " (3 per trained parameter); '", extra,
                     "' belongs to no registered parameter; it was saved for a different set of trained parameters");
  }

  const char* option_keys[4] = {"beta1", "beta2", "eps", "weight_decay"};
  const double current[4] = {options.beta1, options.beta2, options.eps, options.weight_decay};
  for (int k = 0; k < 4; ++k) {
    const auto it = meta.find(option_keys[k]);
    if (it != meta.end() && it->second != exact(current[k]))
      log::warn(file.string(), ": optimizer state was saved with ", option_keys[k], " = ", it->second,
                "; continuing with ", exact(current[k]));
  }

  std::size_t f = 0;
  for (const auto& p : params) {
    float* arrays[3] = {p.master, p.exp_avg, p.exp_avg_sq};
    for (int s = 0; s < 3; ++s) {
      const auto bytes = st.bytes(*found[f++]);
      REFINERY_CHECK(bytes.size() == static_cast<std::size_t>(p.numel) * sizeof(float), "size validated above");
      if (!bytes.empty()) std::memcpy(arrays[s], bytes.data(), bytes.size());  // data may be unaligned
    }
  }
  return static_cast<int64_t>(step);
}

namespace {
std::vector<AdamWStateView> views_of(const std::vector<std::string>& names,
                                     std::vector<std::vector<float>*> arrays) {
  std::vector<AdamWStateView> v;
  for (std::size_t i = 0; i < names.size(); ++i)
    v.push_back({names[i], static_cast<int64_t>(arrays[3 * i]->size()), arrays[3 * i]->data(),
                 arrays[3 * i + 1]->data(), arrays[3 * i + 2]->data()});
  return v;
}
}  // namespace

void AdamW::save(const std::filesystem::path& file) const {
  std::vector<std::string> names;
  std::vector<std::vector<float>*> arrays;
  for (const auto& p : params_) {
    names.push_back(p.name);
    for (auto* a : {&p.master, &p.exp_avg, &p.exp_avg_sq})
      arrays.push_back(const_cast<std::vector<float>*>(a));  // only read by the writer
  }
  write_adamw_state(file, views_of(names, arrays), step_count_, options_);
}

void AdamW::load(const std::filesystem::path& file) {
  // Read into copies first: on error this object stays unchanged.
  std::vector<Parameter> copy = params_;
  std::vector<std::string> names;
  std::vector<std::vector<float>*> arrays;
  for (auto& p : copy) {
    names.push_back(p.name);
    for (auto* a : {&p.master, &p.exp_avg, &p.exp_avg_sq}) arrays.push_back(a);
  }
  step_count_ = read_adamw_state(file, views_of(names, arrays), options_);
  params_ = std::move(copy);
}

}  // namespace refinery::train
