// The exact expert-subset search (expert_subset.hpp).
#include "prune/expert_subset.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>

#include "engine/core/error.hpp"
#include "prune/calibration_pass.hpp"

namespace refinery::prune {

namespace {

std::string module_name(const std::string& hf_prefix) {
  return hf_prefix.rfind("model.", 0) == 0 ? hf_prefix.substr(6) : hf_prefix;
}

bool grouped(const backend::RouterSpec& r) {
  return r.grouping != backend::RouterGrouping::kNone && r.n_group > 1;
}

// C(n, k), saturated at `cap` + 1 (only compared against the cap).
int64_t binomial_capped(int n, int k, int64_t cap) {
  if (k < 0 || k > n) return 0;
  k = std::min(k, n - k);
  double c = 1.0;
  for (int i = 1; i <= k; ++i) {
    c = c * (n - k + i) / i;
    if (c > static_cast<double>(cap) + 1.0) return cap + 1;
  }
  return static_cast<int64_t>(std::llround(c));
}

// Every k-subset of [0, n) in lexicographic order, each offset by `base`.
std::vector<std::vector<int>> combinations(int n, int k, int base) {
  std::vector<std::vector<int>> out;
  std::vector<int> c(static_cast<std::size_t>(k));
  for (int i = 0; i < k; ++i) c[static_cast<std::size_t>(i)] = i;
  while (true) {
    std::vector<int> s(c);
    for (int& e : s) e += base;
    out.push_back(std::move(s));
    int i = k - 1;
    while (i >= 0 && c[static_cast<std::size_t>(i)] == n - k + i) --i;
    if (i < 0) break;
    ++c[static_cast<std::size_t>(i)];
    for (int j = i + 1; j < k; ++j) c[static_cast<std::size_t>(j)] = c[static_cast<std::size_t>(j - 1)] + 1;
  }
  return out;
}

// The routed output [T, hidden] of `sample` when only `experts` exist (all E: the full output),
// with the router `be` runs; weights and choices as the pruned model computes them.
std::vector<float> routed_output(backend::Backend& be, const MoeLayerSample& s, std::span<const int> experts) {
  const int64_t t = s.tokens, h = s.hidden, e_all = s.router.num_experts;
  const int n = static_cast<int>(experts.size());
  backend::RouterSpec spec = s.router;
  spec.num_experts = n;
  Tensor logits = Tensor::empty(DType::kF32, {t, n});
  float* pl = logits.mutable_data<float>();
  for (int64_t i = 0; i < t; ++i)
    for (int j = 0; j < n; ++j) pl[i * n + j] = s.logits[static_cast<std::size_t>(i * e_all + experts[static_cast<std::size_t>(j)])];
  Tensor bias;
  if (!s.correction_bias.empty()) {
    bias = Tensor::empty(DType::kF32, {n});
    for (int j = 0; j < n; ++j)
      bias.mutable_data<float>()[j] = s.correction_bias[static_cast<std::size_t>(experts[static_cast<std::size_t>(j)])];
  }
  const int k = spec.top_k;
  Tensor chosen = Tensor::empty(DType::kI32, {t, k}), weights = Tensor::empty(DType::kF32, {t, k});
  be.route(logits, bias, spec, chosen, weights);
  const int32_t* pc = chosen.data<int32_t>();
  const float* pw = weights.data<float>();
  std::vector<float> y(static_cast<std::size_t>(t * h), 0.0f);
#pragma omp parallel for if (t * h * k > 65536)
  for (int64_t i = 0; i < t; ++i)
    for (int j = 0; j < k; ++j) {
      const int64_t e = experts[static_cast<std::size_t>(pc[i * k + j])];
      const float w = pw[i * k + j];
      const float* f = s.expert_outputs.data() + (e * t + i) * h;
      float* yi = y.data() + i * h;
      for (int64_t c = 0; c < h; ++c) yi[c] += w * f[c];
    }
  return y;
}

double mean_square_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double sum = 0.0;
  const int64_t n = static_cast<int64_t>(a.size());
#pragma omp parallel for reduction(+ : sum) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[static_cast<std::size_t>(i)]) - b[static_cast<std::size_t>(i)];
    sum += d * d;
  }
  return n > 0 ? sum / static_cast<double>(n) : 0.0;
}

void check_sample(const MoeLayerSample& s) {
  const int64_t e = s.router.num_experts;
  REFINERY_CHECK(static_cast<int64_t>(s.logits.size()) == s.tokens * e, "layer ", s.layer,
                 ": sample logits hold ", s.logits.size(), " values, not ", s.tokens, " x ", e);
  REFINERY_CHECK(static_cast<int64_t>(s.expert_outputs.size()) == e * s.tokens * s.hidden, "layer ",
                 s.layer, ": sample expert outputs hold ", s.expert_outputs.size(), " values");
  REFINERY_CHECK(s.correction_bias.empty() || static_cast<int64_t>(s.correction_bias.size()) == e,
                 "layer ", s.layer, ": correction bias of ", s.correction_bias.size(), " values");
}

// Keeps the first `max_rows` rows per MoE layer of the router's input and logits.
class SampleObserver : public model::TapObserver {
 public:
  SampleObserver(model::Transformer& model, int64_t max_rows) : model_(model), max_rows_(max_rows) {
    const model::ModelConfig& c = model.config();
    for (int l = 0; l < c.num_layers; ++l) {
      const model::LayerWeights& lw = model.weights().layers[static_cast<std::size_t>(l)];
      if (!lw.moe) continue;
      const int slot = static_cast<int>(rows_.size());
      layers_.push_back(l);
      rows_.emplace_back();
      logits_.emplace_back();
      inputs_.emplace(module_name(lw.moe->router.name) + ".input", slot);
      logit_taps_.emplace(module_name(lw.mlp_prefix) + ".gate.logits", slot);
    }
  }
  bool wants(std::string_view name) const override {
    return inputs_.find(name) != inputs_.end() || logit_taps_.find(name) != logit_taps_.end();
  }
  void observe(std::string_view name, const Tensor& value) override {
    const bool is_input = inputs_.find(name) != inputs_.end();
    const int slot = is_input ? inputs_.find(name)->second : logit_taps_.find(name)->second;
    std::vector<float>& dst = is_input ? rows_[static_cast<std::size_t>(slot)] : logits_[static_cast<std::size_t>(slot)];
    Tensor host = model_.backend().download(value);
    if (host.dtype() != DType::kF32) host = host.to_f32();
    const int64_t cols = host.size(1);
    const int64_t have = static_cast<int64_t>(dst.size()) / cols;
    const int64_t take = std::min(host.size(0), max_rows_ - have);
    if (take > 0) dst.insert(dst.end(), host.data<float>(), host.data<float>() + take * cols);
  }
  int64_t rows_of(std::size_t slot, int64_t hidden) const {
    return static_cast<int64_t>(rows_[slot].size()) / hidden;
  }

  model::Transformer& model_;
  int64_t max_rows_;
  std::vector<int> layers_;                   // slot -> layer
  std::vector<std::vector<float>> rows_;      // slot -> [T, hidden]
  std::vector<std::vector<float>> logits_;    // slot -> [T, E]
  std::map<std::string, int, std::less<>> inputs_, logit_taps_;
};

// f_e(x_t) for every expert e and row t of `x` [T, hidden] on the model's backend: moe_experts
// with every token sent to expert e at weight 1.
std::vector<float> expert_outputs(model::Transformer& model, int layer, const std::vector<float>& x, int64_t t) {
  backend::Backend& be = model.backend();
  const model::MoeWeights& m = *model.weights().layers[static_cast<std::size_t>(layer)].moe;
  const int64_t h = model.config().hidden_size;
  Tensor host_x = Tensor::empty(be.activation_dtype(), {t, h});
  convert_from_f32(be.activation_dtype(), x.data(), host_x.mutable_data(), x.size());
  const Tensor dx = be.upload(host_x);
  const std::vector<float> ones(static_cast<std::size_t>(t), 1.0f);
  const Tensor weights = be.upload(Tensor::copy_of(DType::kF32, {t, 1}, ones.data()));
  std::vector<float> out;
  out.reserve(m.experts.size() * static_cast<std::size_t>(t * h));
  for (std::size_t e = 0; e < m.experts.size(); ++e) {
    const std::vector<int32_t> ids(static_cast<std::size_t>(t), static_cast<int32_t>(e));
    const Tensor chosen = be.upload(Tensor::copy_of(DType::kI32, {t, 1}, ids.data()));
    Tensor y = be.empty(be.activation_dtype(), {t, h});
    be.moe_experts(dx, chosen, weights, m.experts, y);
    Tensor host = be.download(y);
    if (host.dtype() != DType::kF32) host = host.to_f32();
    out.insert(out.end(), host.data<float>(), host.data<float>() + t * h);
  }
  return out;
}

}  // namespace

std::vector<std::vector<int>> valid_expert_subsets(const backend::RouterSpec& r, int n, int64_t max_subsets) {
  const int e = r.num_experts;
  if (n < r.top_k || n > e)
    throw_user_error("--experts ", n, ": the exact expert choice keeps between top_k = ", r.top_k,
                     " and the ", e, " experts of a layer");
  int64_t count = 0;
  if (!grouped(r)) {
    count = binomial_capped(e, n, max_subsets);
  } else {
    const int per = e / r.n_group;
    if (n % r.n_group != 0 || r.topk_group * (n / r.n_group) < r.top_k)
      throw_user_error("--experts ", n, ": with routing in ", r.n_group, " groups (topk_group ",
                       r.topk_group, ", top_k ", r.top_k, ") the kept count must be a multiple of ",
                       r.n_group, " leaving at least top_k experts in topk_group groups");
    count = 1;
    for (int g = 0; g < r.n_group && count <= max_subsets; ++g)
      count = std::min(max_subsets + 1, count * binomial_capped(per, n / r.n_group, max_subsets));
  }
  if (count > max_subsets)
    throw_user_error("--expert-metric exact: keeping ", n, " of ", e, " experts has more than ", max_subsets,
                     " candidate subsets per layer, too many to search; use --expert-metric frequency or "
                     "gate_norm for this model");
  if (!grouped(r)) return combinations(e, n, 0);
  const int per = e / r.n_group;
  std::vector<std::vector<int>> out = {{}};
  for (int g = 0; g < r.n_group; ++g) {
    const std::vector<std::vector<int>> in_group = combinations(per, n / r.n_group, g * per);
    std::vector<std::vector<int>> next;
    for (const auto& prefix : out)
      for (const auto& part : in_group) {
        std::vector<int> s(prefix);
        s.insert(s.end(), part.begin(), part.end());
        next.push_back(std::move(s));
      }
    out = std::move(next);
  }
  return out;
}

double subset_error(const MoeLayerSample& sample, std::span<const int> experts) {
  check_sample(sample);
  auto be = backend::make_cpu_backend();
  std::vector<int> all(static_cast<std::size_t>(sample.router.num_experts));
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
  return mean_square_diff(routed_output(*be, sample, experts), routed_output(*be, sample, all));
}

LayerSubsetChoice best_expert_subset(const MoeLayerSample& sample, int n, int64_t max_subsets) {
  check_sample(sample);
  const std::vector<std::vector<int>> subsets = valid_expert_subsets(sample.router, n, max_subsets);
  auto be = backend::make_cpu_backend();
  std::vector<int> all(static_cast<std::size_t>(sample.router.num_experts));
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
  const std::vector<float> full = routed_output(*be, sample, all);
  LayerSubsetChoice best;
  best.layer = sample.layer;
  best.tokens = sample.tokens;
  best.subsets = static_cast<int64_t>(subsets.size());
  best.error = std::numeric_limits<double>::infinity();
  best.full_mean_square = mean_square_diff(full, std::vector<float>(full.size(), 0.0f));
  for (const std::vector<int>& s : subsets) {
    const double err = mean_square_diff(routed_output(*be, sample, s), full);
    if (err < best.error) {  // strict: ties keep the lexicographically first
      best.error = err;
      best.experts = s;
    }
  }
  return best;
}

namespace {

MoeLayerSample make_sample(model::Transformer& model, const SampleObserver& obs, std::size_t slot) {
  const model::ModelConfig& c = model.config();
  MoeLayerSample s;
  s.layer = obs.layers_[slot];
  s.router = model::router_spec(c);
  s.hidden = c.hidden_size;
  s.tokens = obs.rows_of(slot, s.hidden);
  REFINERY_CHECK(static_cast<int64_t>(obs.logits_[slot].size()) == s.tokens * s.router.num_experts,
                 "layer ", s.layer, ": ", s.tokens, " router inputs but ", obs.logits_[slot].size(), " logits");
  s.logits = obs.logits_[slot];
  const Tensor& bias = model.weights().layers[static_cast<std::size_t>(s.layer)].moe->correction_bias;
  if (bias.defined()) {
    Tensor host = model.backend().download(bias);
    if (host.dtype() != DType::kF32) host = host.to_f32();
    s.correction_bias.assign(host.data<float>(), host.data<float>() + host.numel());
  }
  s.inputs = obs.rows_[slot];
  s.expert_outputs = expert_outputs(model, s.layer, s.inputs, s.tokens);
  return s;
}

CalibrationOptions pass_options(const CalibrationOptions& calibration, int64_t max_tokens) {
  CalibrationOptions o = calibration;
  o.max_tokens = max_tokens;  // whole windows, at least one: enough rows for every layer
  if (o.seq_len > 0 && max_tokens % o.seq_len != 0) o.max_tokens = (max_tokens / o.seq_len + 1) * o.seq_len;
  return o;
}

}  // namespace

std::vector<MoeLayerSample> collect_moe_samples(model::Transformer& model, std::span<const int32_t> tokens,
                                                const CalibrationOptions& calibration, int64_t max_tokens) {
  if (max_tokens < 1) throw_user_error("the exact expert choice needs max_tokens >= 1, got ", max_tokens);
  SampleObserver obs(model, max_tokens);
  run_calibration(model, tokens, pass_options(calibration, max_tokens), obs);
  std::vector<MoeLayerSample> out;
  for (std::size_t slot = 0; slot < obs.layers_.size(); ++slot) out.push_back(make_sample(model, obs, slot));
  return out;
}

std::vector<LayerSubsetChoice> choose_expert_subsets(model::Transformer& model, std::span<const int32_t> tokens,
                                                     const ExpertSubsetOptions& options) {
  const model::ModelConfig& c = model.config();
  PruneOptions po;
  po.experts = options.experts;
  check_options(c, po);  // --experts on a dense model, N out of range, routing groups
  if (options.max_tokens < 1) throw_user_error("the exact expert choice needs max_tokens >= 1, got ", options.max_tokens);
  valid_expert_subsets(model::router_spec(c), options.experts, options.max_subsets);  // count, before the pass
  SampleObserver obs(model, options.max_tokens);
  run_calibration(model, tokens, pass_options(options.calibration, options.max_tokens), obs);
  std::vector<LayerSubsetChoice> out;
  for (std::size_t slot = 0; slot < obs.layers_.size(); ++slot) {
    const MoeLayerSample s = make_sample(model, obs, slot);  // one layer's E x T x hidden at a time
    out.push_back(best_expert_subset(s, options.experts, options.max_subsets));
  }
  return out;
}

void set_plan_experts(PrunePlan& plan, const std::vector<LayerSubsetChoice>& choices) {
  for (const LayerSubsetChoice& choice : choices)
    for (LayerPlan& lp : plan.layers) {
      if (lp.source != choice.layer) continue;
      REFINERY_CHECK(lp.experts.empty(), "layer ", lp.source, ": the plan already chooses its experts");
      if (!lp.expert_channels.empty()) {
        std::vector<std::vector<int>> kept;
        for (int e : choice.experts) {
          REFINERY_CHECK(e >= 0 && e < static_cast<int>(lp.expert_channels.size()), "layer ", lp.source,
                         ": expert ", e, " has no channel list in the plan");
          kept.push_back(lp.expert_channels[static_cast<std::size_t>(e)]);
        }
        lp.expert_channels = std::move(kept);
      }
      lp.experts = choice.experts;
    }
}

}  // namespace refinery::prune
