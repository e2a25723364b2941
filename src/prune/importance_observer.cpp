// The importance pass's tap observer: running sums over the calibration stream.
#include "prune/importance_observer.hpp"

#include <cmath>

#include "engine/core/error.hpp"

namespace refinery::prune {

namespace {

// "model.layers.3.mlp.down_proj" -> "layers.3.mlp.down_proj" (the tap naming, taps.hpp).
std::string module_name(const std::string& hf_prefix) {
  return hf_prefix.rfind("model.", 0) == 0 ? hf_prefix.substr(6) : hf_prefix;
}

// The tap's value as host f32 (CUDA activations are bf16 on the device).
Tensor host_f32(model::Transformer& m, const Tensor& value) {
  Tensor h = m.backend().download(value);
  return h.dtype() == DType::kF32 ? h : h.to_f32();
}

}  // namespace

void ImportanceObserver::ChannelSums::add(const float* x, int64_t n, int64_t cols) {
  if (abs.empty()) {
    abs.assign(static_cast<std::size_t>(cols), 0.0);
    sq.assign(static_cast<std::size_t>(cols), 0.0);
  }
  REFINERY_CHECK(static_cast<int64_t>(abs.size()) == cols, "channel count changed: ", abs.size(),
                 " -> ", cols);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double v = x[r * cols + c];
      abs[static_cast<std::size_t>(c)] += std::fabs(v);
      sq[static_cast<std::size_t>(c)] += v * v;
    }
  rows += n;
}

// A structure no token reached scores 0 on every one of its `width` channels.
ChannelScores ImportanceObserver::ChannelSums::scores(int64_t width) const {
  ChannelScores s;
  if (abs.empty()) {
    s.mean_abs.assign(static_cast<std::size_t>(width), 0.0);
    s.rms.assign(static_cast<std::size_t>(width), 0.0);
    return s;
  }
  const double n = static_cast<double>(rows);
  for (std::size_t c = 0; c < abs.size(); ++c) {
    s.mean_abs.push_back(abs[c] / n);
    s.rms.push_back(std::sqrt(sq[c] / n));
  }
  return s;
}

void ImportanceObserver::add_role(const std::string& tap_name, Role role, int layer, int expert) {
  // A name seen twice would be folded twice (e.g. MLA's q_a_proj and kv_a_proj read the same
  // normed input): callers register one tap per quantity.
  roles_.emplace(tap_name, TapRole{role, layer, expert});
}

ImportanceObserver::ImportanceObserver(model::Transformer& model) : model_(model) {
  const model::ModelConfig& c = model.config();
  const model::ModelWeights& w = model.weights();
  layers_.resize(static_cast<std::size_t>(c.num_layers));
  embedding_abs_.assign(static_cast<std::size_t>(c.hidden_size), 0.0);
  add_role("norm.output", Role::kNormOutput, -1);
  for (int l = 0; l < c.num_layers; ++l) {
    const model::LayerWeights& lw = w.layers[static_cast<std::size_t>(l)];
    const std::string layer = "layers." + std::to_string(l);
    add_role(layer + ".input", Role::kLayerInput, l);
    add_role(layer + ".output", Role::kLayerOutput, l);
    const model::AttentionWeights& a = lw.attention;
    add_role(module_name(a.o_proj.name) + ".input", Role::kHeads, l);
    // The input-norm output: the first projection's input (q_a_proj with MLA's q LoRA).
    const bool q_lora = c.attention.kind == model::AttentionKind::kMla && c.attention.q_lora_rank;
    add_role(module_name(q_lora ? a.q_a_proj.name : a.q_proj.name) + ".input", Role::kNormOutput, l);
    LayerSums& s = layers_[static_cast<std::size_t>(l)];
    s.head_norm.assign(static_cast<std::size_t>(c.attention.num_heads), 0.0);
    if (lw.mlp) {
      add_role(module_name(lw.mlp->gate_proj.name) + ".input", Role::kNormOutput, l);
      add_role(module_name(lw.mlp->down_proj.name) + ".input", Role::kMlpDown, l);
    }
    if (lw.moe) {
      const model::MoeWeights& m = *lw.moe;
      add_role(module_name(m.router.name) + ".input", Role::kNormOutput, l);
      const std::string gate = module_name(lw.mlp_prefix) + ".gate";
      add_role(gate + ".experts", Role::kRouteExperts, l);
      add_role(gate + ".weights", Role::kRouteWeights, l);
      if (m.shared) add_role(module_name(m.shared->down_proj.name) + ".input", Role::kSharedDown, l);
      for (std::size_t e = 0; e < m.experts.size(); ++e)
        add_role(module_name(m.experts[e].down.name) + ".input", Role::kExpertDown, l,
                 static_cast<int>(e));
      s.routed.assign(m.experts.size(), 0);
      s.gate_norm.assign(m.experts.size(), 0.0);
      s.expert_channels.resize(m.experts.size());
    }
  }
}

bool ImportanceObserver::wants(std::string_view name) const {
  return roles_.find(name) != roles_.end();
}

void ImportanceObserver::observe(std::string_view name, const Tensor& value) {
  const auto it = roles_.find(name);
  if (it == roles_.end()) return;
  const TapRole r = it->second;
  const model::ModelConfig& c = model_.config();
  if (r.role == Role::kNormOutput) {
    const Tensor x = host_f32(model_, value);  // [T, hidden]
    const float* p = x.data<float>();
    const int64_t t = x.size(0), h = x.size(1);
    for (int64_t i = 0; i < t; ++i)
      for (int64_t j = 0; j < h; ++j) embedding_abs_[static_cast<std::size_t>(j)] += std::fabs(p[i * h + j]);
    return;
  }
  LayerSums& s = layers_[static_cast<std::size_t>(r.layer)];
  switch (r.role) {
    case Role::kLayerInput: {
      const Tensor x = host_f32(model_, value);
      s.input.assign(x.data<float>(), x.data<float>() + x.numel());
      break;
    }
    case Role::kLayerOutput: {
      const Tensor y = host_f32(model_, value);
      const float* p = y.data<float>();
      const int64_t t = y.size(0), h = y.size(1);
      REFINERY_CHECK(static_cast<int64_t>(s.input.size()) == t * h, "layer ", r.layer,
                     ": output tap without its input");
      for (int64_t i = 0; i < t; ++i) {
        double dot = 0.0, na = 0.0, nb = 0.0;
        for (int64_t j = 0; j < h; ++j) {
          const double a = s.input[static_cast<std::size_t>(i * h + j)], b = p[i * h + j];
          dot += a * b;
          na += a * a;
          nb += b * b;
        }
        // A zero vector has no direction: count it as unchanged (cos 1) rather than NaN.
        const double denom = std::sqrt(na) * std::sqrt(nb);
        s.one_minus_cos += denom > 0.0 ? 1.0 - dot / denom : 0.0;
      }
      s.input.clear();
      break;
    }
    case Role::kHeads: {
      const Tensor x = host_f32(model_, value);  // [T, heads * dv]
      const float* p = x.data<float>();
      const int64_t t = x.size(0), cols = x.size(1), heads = c.attention.num_heads;
      const int64_t dv = cols / heads;
      for (int64_t i = 0; i < t; ++i)
        for (int64_t hd = 0; hd < heads; ++hd) {
          double sq = 0.0;
          for (int64_t j = 0; j < dv; ++j) {
            const double v = p[i * cols + hd * dv + j];
            sq += v * v;
          }
          s.head_norm[static_cast<std::size_t>(hd)] += std::sqrt(sq);
        }
      break;
    }
    case Role::kMlpDown:
    case Role::kSharedDown: {
      const Tensor x = host_f32(model_, value);
      (r.role == Role::kMlpDown ? s.mlp : s.shared).add(x.data<float>(), x.size(0), x.size(1));
      break;
    }
    case Role::kRouteExperts: {
      const Tensor x = model_.backend().download(value);  // i32 [T, k]
      s.route_experts.assign(x.data<int32_t>(), x.data<int32_t>() + x.numel());
      for (int32_t e : s.route_experts)
        if (e >= 0 && e < static_cast<int32_t>(s.routed.size())) ++s.routed[static_cast<std::size_t>(e)];
      break;
    }
    case Role::kRouteWeights: {
      const Tensor x = model_.backend().download(value);  // f32 [T, k]
      s.route_weights.assign(x.data<float>(), x.data<float>() + x.numel());
      break;
    }
    case Role::kExpertDown:
      expert_down(s, r.layer, r.expert, value);
      break;
    case Role::kNormOutput:
      break;
  }
}

// x: [n, moe_intermediate], the rows of the tokens routed to `expert`, in the order of the
// flattened [T, k] choice (transformer_mlp.cpp gathers them that way), so the i-th row's gate
// weight is the i-th matching entry of route_weights.
void ImportanceObserver::expert_down(LayerSums& s, int layer, int expert, const Tensor& x) {
  const Tensor host = host_f32(model_, x);
  const int64_t n = host.size(0);
  s.expert_channels[static_cast<std::size_t>(expert)].add(host.data<float>(), n, host.size(1));
  std::vector<float> gates;
  for (std::size_t i = 0; i < s.route_experts.size(); ++i)
    if (s.route_experts[i] == expert) gates.push_back(s.route_weights[i]);
  REFINERY_CHECK(static_cast<int64_t>(gates.size()) == n, "layer ", layer, " expert ", expert,
                 ": ", n, " rows reached the expert but the router chose it ", gates.size(), " times");
  // The expert's output down(a): [n, hidden], on the backend (any weight format).
  backend::Backend& be = model_.backend();
  const model::MoeWeights& m = *model_.weights().layers[static_cast<std::size_t>(layer)].moe;
  const backend::LinearWeight& down = m.experts[static_cast<std::size_t>(expert)].down;
  Tensor y = be.empty(be.activation_dtype(), {n, down.out_features()});
  be.linear(x, down, y);
  const Tensor out = host_f32(model_, y);
  const float* p = out.data<float>();
  const int64_t h = out.size(1);
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0.0;
    for (int64_t j = 0; j < h; ++j) sq += static_cast<double>(p[i * h + j]) * p[i * h + j];
    s.gate_norm[static_cast<std::size_t>(expert)] += gates[static_cast<std::size_t>(i)] * std::sqrt(sq);
  }
}

void ImportanceObserver::finish(ImportanceReport& report) const {
  const model::ModelConfig& c = model_.config();
  const double t = tokens_ > 0 ? static_cast<double>(tokens_) : 1.0;
  report.embedding_channels.clear();
  for (double v : embedding_abs_) report.embedding_channels.push_back(v / t);
  report.layers.clear();
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerSums& s = layers_[static_cast<std::size_t>(l)];
    LayerImportance li;
    li.layer = l;
    li.moe = c.layer_is_moe(l);
    li.block_score = s.one_minus_cos / t;
    for (double v : s.head_norm) li.head_norm.push_back(v / t);
    const int heads = c.attention.num_heads, kv = c.attention.num_kv_heads;
    li.kv_group_norm.assign(static_cast<std::size_t>(kv), 0.0);
    for (int h = 0; h < heads; ++h)
      li.kv_group_norm[static_cast<std::size_t>(h / (heads / kv))] += li.head_norm[static_cast<std::size_t>(h)];
    li.mlp_channels = s.mlp.scores(li.moe ? 0 : c.intermediate_size);
    li.shared_channels = s.shared.scores(li.moe && c.moe ? c.moe->shared_intermediate_size : 0);
    if (li.moe) {
      ExpertScores e;
      e.routed_tokens = s.routed;
      for (std::size_t i = 0; i < s.routed.size(); ++i) {
        e.frequency.push_back(static_cast<double>(s.routed[i]) / t);
        e.gate_norm.push_back(s.routed[i] > 0 ? s.gate_norm[i] / static_cast<double>(s.routed[i]) : 0.0);
        e.channels.push_back(s.expert_channels[i].scores(c.moe->expert_intermediate_size));
      }
      li.experts = std::move(e);
    }
    report.layers.push_back(std::move(li));
  }
}

}  // namespace refinery::prune
