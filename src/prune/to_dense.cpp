// MoE -> dense initialization (to_dense.hpp): routing statistics, the choice of experts, the dense
// config and the writing of the model directory.
#include "prune/to_dense.hpp"


#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/io/atomic_file.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/io/model_directory.hpp"
#include "engine/io/safetensors_writer.hpp"
#include "engine/model/model_weights.hpp"
#include "prune/apply.hpp"
#include "prune/calibration_pass.hpp"

namespace refinery::prune {

namespace fs = std::filesystem;

namespace {

std::string module_name(const std::string& hf_prefix) {
  return hf_prefix.rfind("model.", 0) == 0 ? hf_prefix.substr(6) : hf_prefix;
}

// Sums the router's choices and weights (and qwen2_moe's shared-expert gate) per MoE layer.
class RoutingObserver : public model::TapObserver {
 public:
  RoutingObserver(model::Transformer& model, RoutingStats& stats) : model_(model), stats_(stats) {
    const model::ModelConfig& c = model.config();
    stats_.layers.assign(static_cast<std::size_t>(c.num_layers), {});
    for (int l = 0; l < c.num_layers; ++l) {
      const model::LayerWeights& lw = model.weights().layers[static_cast<std::size_t>(l)];
      if (!lw.moe) continue;
      const std::string gate = module_name(lw.mlp_prefix) + ".gate";
      roles_[gate + ".experts"] = {kExperts, l};
      roles_[gate + ".weights"] = {kWeights, l};
      if (lw.moe->shared_gate.defined()) roles_[module_name(lw.moe->shared_gate.name) + ".input"] = {kSharedGate, l};
      stats_.layers[static_cast<std::size_t>(l)].routed.assign(lw.moe->experts.size(), 0);
      stats_.layers[static_cast<std::size_t>(l)].gate_sum.assign(lw.moe->experts.size(), 0.0);
    }
    choice_.resize(static_cast<std::size_t>(c.num_layers));
  }
  bool wants(std::string_view name) const override { return roles_.find(name) != roles_.end(); }
  void observe(std::string_view name, const Tensor& value) override {
    const auto [role, layer] = roles_.find(name)->second;
    backend::Backend& be = model_.backend();
    RoutingStats::Layer& s = stats_.layers[static_cast<std::size_t>(layer)];
    std::vector<int32_t>& choice = choice_[static_cast<std::size_t>(layer)];
    if (role == kExperts) {  // i32 [T, k], delivered just before the weights
      const Tensor x = be.download(value);
      choice.assign(x.data<int32_t>(), x.data<int32_t>() + x.numel());
    } else if (role == kWeights) {  // f32 [T, k]
      const Tensor x = be.download(value);
      REFINERY_CHECK(static_cast<std::size_t>(x.numel()) == choice.size(), "layer ", layer,
                     ": router weights without their experts");
      const float* w = x.data<float>();
      for (std::size_t i = 0; i < choice.size(); ++i) {
        const auto e = static_cast<std::size_t>(choice[i]);
        if (e >= s.routed.size()) continue;
        ++s.routed[e];
        s.gate_sum[e] += w[i];
      }
    } else {  // the shared-expert gate's input h [T, hidden]: sum of sigmoid(gate . h)
      const model::MoeWeights& m = *model_.weights().layers[static_cast<std::size_t>(layer)].moe;
      Tensor g = be.empty(be.activation_dtype(), {value.size(0), 1});
      be.linear(value, m.shared_gate, g);
      Tensor host = be.download(g);
      if (host.dtype() != DType::kF32) host = host.to_f32();
      for (int64_t i = 0; i < host.numel(); ++i)
        s.shared_gate_sum += 1.0 / (1.0 + std::exp(-static_cast<double>(host.data<float>()[i])));
    }
  }

 private:
  enum Role { kExperts, kWeights, kSharedGate };
  struct Tap {
    Role role;
    int layer;
  };
  model::Transformer& model_;
  RoutingStats& stats_;
  std::map<std::string, Tap, std::less<>> roles_;
  std::vector<std::vector<int32_t>> choice_;  // per layer, the current window's [T, k]
};

// A dense weight of the parent as host f32 [out, in]; user error for a quantized one.
Tensor dense_f32(const backend::LinearWeight& w) {
  const auto* d = std::get_if<backend::DenseWeight>(&w.storage);
  if (d == nullptr)
    throw_user_error(w.name, " is ", w.describe(), "; --to-dense needs plain f32/bf16/f16 weights: "
                     "dequantize the model first");
  return d->weight.to_f32();
}

DType dense_dtype(const backend::LinearWeight& w) {
  return std::get<backend::DenseWeight>(w.storage).weight.dtype();
}

// One piece of a merged SwiGLU: its three weights and the scale of its down columns.
struct FfnPiece {
  backend::LinearWeight gate, up, down;
  double scale = 1.0;
};

// gate/up [width, hidden] (rows of the pieces, then zero rows) or down [hidden, width] (scaled
// columns of the pieces, then zero columns), converted to `dtype` into `dst`.
void fill_merged(const std::vector<FfnPiece>& pieces, int which, int64_t hidden, int64_t width,
                 DType dtype, std::span<std::byte> dst) {
  std::vector<float> out(static_cast<std::size_t>(hidden * width), 0.0f);
  int64_t offset = 0;
  for (const FfnPiece& p : pieces) {
    const Tensor w = dense_f32(which == 0 ? p.gate : which == 1 ? p.up : p.down);
    const float* src = w.data<float>();
    if (which < 2) {  // [n, hidden] rows at `offset`
      const int64_t n = w.size(0);
      std::copy(src, src + n * hidden, out.begin() + offset * hidden);
      offset += n;
    } else {  // [hidden, n] columns at `offset`, times the scale
      const int64_t n = w.size(1);
      for (int64_t r = 0; r < hidden; ++r)
        for (int64_t c = 0; c < n; ++c)
          out[static_cast<std::size_t>(r * width + offset + c)] = static_cast<float>(p.scale * src[r * n + c]);
      offset += n;
    }
  }
  REFINERY_CHECK(offset <= width, "merged FFN of ", offset, " channels exceeds ", width);
  REFINERY_CHECK(dst.size() == out.size() * dtype_bits(dtype) / 8, "merged FFN buffer size");
  convert_from_f32(dtype, out.data(), dst.data(), out.size());
}


// The layer index of "model.layers.N.<rest>", or -1.
int layer_of(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return -1;
  std::size_t end = prefix.size();
  while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == prefix.size() || end >= name.size() || name[end] != '.') return -1;
  return std::stoi(name.substr(prefix.size(), end - prefix.size()));
}

}  // namespace

nlohmann::json RoutingStats::to_json() const {
  nlohmann::json layers_json = nlohmann::json::array();
  for (const Layer& l : layers)
    layers_json.push_back({{"routed", l.routed}, {"gate_sum", l.gate_sum}, {"shared_gate_sum", l.shared_gate_sum}});
  return {{"tokens", tokens}, {"layers", layers_json}};
}

RoutingStats compute_routing_stats(model::Transformer& model, std::span<const int32_t> tokens,
                                   const CalibrationOptions& options) {
  RoutingStats stats;
  RoutingObserver observer(model, stats);
  stats.tokens = run_calibration(model, tokens, options, observer).tokens;
  return stats;
}

GateScale parse_gate_scale(const std::string& name) {
  if (name == "routed_mean") return GateScale::kRoutedMean;
  if (name == "expected") return GateScale::kExpected;
  throw_user_error("gate scale \"", name, "\" is not one of routed_mean, expected");
}

const char* gate_scale_name(GateScale scale) {
  return scale == GateScale::kRoutedMean ? "routed_mean" : "expected";
}

std::vector<DenseLayerSource> choose_dense_sources(const model::ModelConfig& c, const ImportanceReport& report,
                                                   const RoutingStats& stats, const ToDenseOptions& o) {
  if (!c.moe) throw_user_error(c.source, ": --to-dense needs an MoE model; ", c.model_type, " is dense");
  if (c.quant.method != model::QuantMethod::kNone)
    throw_user_error(c.source, ": --to-dense needs plain weights, the model is ", model::quant_method_name(c.quant.method),
                     "-quantized; dequantize it first");
  if (c.mlp_bias) throw_user_error(c.source, ": --to-dense does not support mlp_bias = true");
  if (o.metric == ExpertMetric::kRandom)
    throw_user_error("--to-dense chooses experts by frequency or gate_norm, not random");
  const model::MoeConfig& m = *c.moe;
  const int k = o.routed_experts_per_layer;
  if (k < 0 || k > m.num_experts || (k == 0 && m.shared_intermediate_size == 0))
    throw_user_error("--to-dense keeps ", k, " routed experts per layer; give 1..", m.num_experts,
                     m.shared_intermediate_size > 0 ? " (or 0 for the shared experts alone)" : "");
  if (static_cast<int>(report.layers.size()) != c.num_layers || static_cast<int>(stats.layers.size()) != c.num_layers)
    throw_user_error("the importance report has ", report.layers.size(), " layers and the routing statistics ",
                     stats.layers.size(), ", the model ", c.num_layers, "; they were computed for another model");
  if (stats.tokens <= 0) throw_user_error("the routing statistics hold no calibration tokens");
  std::vector<DenseLayerSource> out(static_cast<std::size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    DenseLayerSource& d = out[static_cast<std::size_t>(l)];
    d.moe = c.layer_is_moe(l);
    if (!d.moe) {
      d.width = c.intermediate_size;
      continue;
    }
    const LayerImportance& li = report.layers[static_cast<std::size_t>(l)];
    const RoutingStats::Layer& rs = stats.layers[static_cast<std::size_t>(l)];
    if (!li.experts || static_cast<int>(li.experts->frequency.size()) != m.num_experts ||
        static_cast<int>(li.experts->gate_norm.size()) != m.num_experts ||
        static_cast<int>(rs.routed.size()) != m.num_experts)
      throw_user_error("layer ", l, " of the importance report or routing statistics does not score the model's ",
                       m.num_experts, " experts; they were computed for another model");
    const std::vector<double>& score =
        o.metric == ExpertMetric::kFrequency ? li.experts->frequency : li.experts->gate_norm;
    std::vector<int> order(static_cast<std::size_t>(m.num_experts));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)];
    });
    d.experts.assign(order.begin(), order.begin() + k);
    std::sort(d.experts.begin(), d.experts.end());
    for (int e : d.experts) {
      const auto i = static_cast<std::size_t>(e);
      const double routed = static_cast<double>(rs.routed[i]);
      if (rs.routed[i] == 0) log::warn("layer ", l, ": expert ", e, " was chosen for --to-dense but no calibration "
                                       "token was routed to it; its scale is 0");
      d.scales.push_back(rs.routed[i] == 0 ? 0.0
                         : o.gate_scale == GateScale::kRoutedMean ? rs.gate_sum[i] / routed
                                                                  : rs.gate_sum[i] / static_cast<double>(stats.tokens));
    }
    if (m.shared_expert_gate) d.shared_scale = rs.shared_gate_sum / static_cast<double>(stats.tokens);
    d.width = m.shared_intermediate_size + k * m.expert_intermediate_size;
  }
  return out;
}

nlohmann::json dense_config(const nlohmann::json& parent, const model::ModelConfig& c, int intermediate_size) {
  nlohmann::json j = parent;
  j["intermediate_size"] = intermediate_size;
  const auto drop = [&](std::initializer_list<const char*> keys) {
    for (const char* key : keys) j.erase(key);
  };
  const auto retarget = [&](const char* type, const char* arch) {
    j["model_type"] = type;
    j["architectures"] = nlohmann::json::array({arch});
  };
  switch (c.family) {
    case model::ModelFamily::kDeepseekV2:
    case model::ModelFamily::kDeepseekV3:
      j["first_k_dense_replace"] = c.num_layers;
      if (j.contains("num_nextn_predict_layers")) j["num_nextn_predict_layers"] = 0;
      break;
    case model::ModelFamily::kMixtral:
      retarget("mistral", "MistralForCausalLM");
      drop({"num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "router_jitter_noise",
            "output_router_logits"});
      break;
    case model::ModelFamily::kQwen2Moe:
      retarget("qwen2", "Qwen2ForCausalLM");
      drop({"num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
            "decoder_sparse_step", "mlp_only_layers", "norm_topk_prob", "router_aux_loss_coef",
            "output_router_logits", "qkv_bias"});
      break;
    case model::ModelFamily::kQwen3Moe:
      retarget("qwen3", "Qwen3ForCausalLM");
      drop({"num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
            "mlp_only_layers", "norm_topk_prob", "router_aux_loss_coef", "output_router_logits"});
      break;
    default:
      throw_user_error(c.source, ": --to-dense needs an MoE model (mixtral, qwen2_moe, qwen3_moe, deepseek_v2, "
                       "deepseek_v3); ", c.model_type, " is dense");
  }
  return j;
}

ToDenseResult write_dense_from_moe(const fs::path& moe_dir, const ImportanceReport& report,
                                   const RoutingStats& stats, const ToDenseOptions& options, const fs::path& out_dir) {
  check_output_directory(out_dir, moe_dir, options.force);
  const fs::path config_path = moe_dir / "config.json";
  const nlohmann::json parent_json = io::read_json_file(config_path);
  const model::ModelConfig c = model::parse_model_config(parent_json, config_path.string());
  ToDenseResult result;
  result.layers = choose_dense_sources(c, report, stats, options);
  const io::Checkpoint checkpoint = io::Checkpoint::open(moe_dir);
  const model::ModelWeights weights = model::ModelWeights::load(checkpoint, c);
  for (const DenseLayerSource& d : result.layers) result.intermediate_size = std::max(result.intermediate_size, d.width);
  result.config = dense_config(parent_json, c, result.intermediate_size);
  result.model_type = result.config.at("model_type").get<std::string>();

  std::vector<io::TensorToWrite> tensors;
  for (const std::string& name : checkpoint.names()) {
    result.parameters_before += static_cast<int64_t>(checkpoint.at(name).entry->num_elements());
    const int l = layer_of(name);
    if (l >= c.num_layers) continue;  // DeepSeek MTP layers
    if (l >= 0 && name.rfind(weights.layers[static_cast<std::size_t>(l)].mlp_prefix + ".", 0) == 0) continue;
    const io::TensorEntry& e = *checkpoint.at(name).entry;
    tensors.push_back({name, e.dtype, e.shape, checkpoint.bytes(name), {}});
  }
  const int64_t hidden = c.hidden_size, width = result.intermediate_size;
  for (int l = 0; l < c.num_layers; ++l) {
    const model::LayerWeights& lw = weights.layers[static_cast<std::size_t>(l)];
    const DenseLayerSource& d = result.layers[static_cast<std::size_t>(l)];
    std::vector<FfnPiece> pieces;
    if (lw.mlp) pieces.push_back({lw.mlp->gate_proj, lw.mlp->up_proj, lw.mlp->down_proj, 1.0});
    if (lw.moe && lw.moe->shared)
      pieces.push_back({lw.moe->shared->gate_proj, lw.moe->shared->up_proj, lw.moe->shared->down_proj, d.shared_scale});
    for (std::size_t i = 0; i < d.experts.size(); ++i) {
      const backend::ExpertWeights& ew = lw.moe->experts[static_cast<std::size_t>(d.experts[i])];
      pieces.push_back({ew.gate, ew.up, ew.down, d.scales[i]});
    }
    REFINERY_CHECK(!pieces.empty(), "layer ", l, " has no FFN piece");
    for (const FfnPiece& p : pieces) dense_f32(p.gate);  // quantized pieces fail here, before writing
    const DType dtype = dense_dtype(pieces.front().gate);
    const std::string prefix = "model.layers." + std::to_string(l) + ".mlp.";
    const char* names[3] = {"gate_proj", "up_proj", "down_proj"};
    for (int which = 0; which < 3; ++which) {
      io::TensorToWrite t;
      t.name = prefix + names[which] + ".weight";
      t.dtype = dtype;
      t.shape = which < 2 ? std::vector<int64_t>{width, hidden} : std::vector<int64_t>{hidden, width};
      t.fill = [pieces, which, hidden, width, dtype](std::span<std::byte> dst) {
        fill_merged(pieces, which, hidden, width, dtype, dst);
      };
      tensors.push_back(std::move(t));
    }
    // qwen2 always has q/k/v biases (transformers hard-codes them): zeros when the parent has none.
    if (c.family == model::ModelFamily::kQwen2Moe && !c.attention.qkv_bias) {
      const model::AttentionWeights& a = lw.attention;
      for (const backend::LinearWeight* w : {&a.q_proj, &a.k_proj, &a.v_proj}) {
        io::TensorToWrite t;
        t.name = w->name + ".bias";
        t.dtype = dense_dtype(*w);
        t.shape = {w->out_features()};
        t.fill = [](std::span<std::byte> dst) { std::fill(dst.begin(), dst.end(), std::byte{0}); };
        tensors.push_back(std::move(t));
      }
    }
  }
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  for (const io::TensorToWrite& t : tensors) {
    int64_t n = 1;
    for (int64_t s : t.shape) n *= s;
    result.parameters_after += n;
  }

  io::StagedModelDirectory temp(out_dir);
  io::write_file_atomically(temp.path() / "config.json", result.config.dump(2) + "\n");
  io::write_checkpoint(temp.path(), tensors);
  temp.copy_side_files(moe_dir);

  nlohmann::json prov = options.provenance.is_null() ? nlohmann::json::object() : options.provenance;
  if (!prov.contains("pass")) prov["pass"] = "to_dense";
  if (!prov.contains("parent")) prov["parent"] = io::absolute_directory(moe_dir).string();
  prov["to_dense"] = {{"routed_experts_per_layer", options.routed_experts_per_layer},
                      {"metric", expert_metric_name(options.metric)},
                      {"gate_scale", gate_scale_name(options.gate_scale)},
                      {"calibration_tokens", stats.tokens},
                      {"parent_model_type", c.model_type},
                      {"model_type", result.model_type},
                      {"intermediate_size", result.intermediate_size}};
  nlohmann::json layers_json = nlohmann::json::array();
  for (std::size_t l = 0; l < result.layers.size(); ++l) {
    const DenseLayerSource& d = result.layers[l];
    nlohmann::json lj = {{"layer", l}, {"moe", d.moe}, {"width", d.width}};
    if (d.moe) {
      lj["experts"] = d.experts;
      lj["scales"] = d.scales;
      lj["shared_scale"] = d.shared_scale;
    }
    layers_json.push_back(std::move(lj));
  }
  prov["to_dense"]["layers"] = std::move(layers_json);
  prov["parameters_before"] = result.parameters_before;
  prov["parameters_after"] = result.parameters_after;
  if (fs::exists(moe_dir / "refinery.json")) prov["parent_provenance"] = io::read_json_file(moe_dir / "refinery.json");
  io::write_file_atomically(temp.path() / "refinery.json", prov.dump(2) + "\n");

  temp.commit();
  return result;
}

}  // namespace refinery::prune
