// AWQ, the layer loop (awq.hpp): calibration forward with taps, scale search per group, scales
// applied, clip search, quantization and packing.
#include "quantize/awq.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

#include "engine/core/log.hpp"
#include "quantize/awq_layer.hpp"
#include "quantize/awq_pack.hpp"
#include "quantize/quantizable_linears.hpp"

namespace refinery::quantize {

using namespace awq_detail;

namespace {

// Copies the named taps of one forward (they are valid only during observe()).
class CaptureInputs final : public model::TapObserver {
 public:
  CaptureInputs(backend::Backend& be, std::set<std::string> names)
      : be_(be), names_(std::move(names)) {}
  bool wants(std::string_view name) const override { return names_.count(std::string(name)) > 0; }
  void observe(std::string_view name, const Tensor& value) override {
    Tensor copy = be_.empty(value.dtype(), value.shape());
    copy.copy_from(value);
    got_[std::string(name)] = std::move(copy);
  }
  std::map<std::string, Tensor> take() { return std::move(got_); }

 private:
  backend::Backend& be_;
  std::set<std::string> names_;
  std::map<std::string, Tensor> got_;
};

Tensor host_tensor(DType dtype, std::vector<int64_t> shape, const std::vector<float>& values) {
  Tensor t = Tensor::empty(dtype, std::move(shape));
  convert_from_f32(dtype, values.data(), t.mutable_data(), values.size());
  return t;
}

// The RMSNorm weights of layer l by HF tensor name.
std::map<std::string, const Tensor*> layer_norms(const model::ModelWeights& weights, int l) {
  const model::LayerWeights& lw = weights.layers.at(static_cast<std::size_t>(l));
  const std::string base = "model.layers." + std::to_string(l);
  std::map<std::string, const Tensor*> out = {
      {base + ".input_layernorm.weight", &lw.input_layernorm},
      {base + ".post_attention_layernorm.weight", &lw.post_attention_layernorm}};
  if (lw.attention.q_a_layernorm.defined())
    out[base + ".self_attn.q_a_layernorm.weight"] = &lw.attention.q_a_layernorm;
  if (lw.attention.kv_a_layernorm.defined())
    out[base + ".self_attn.kv_a_layernorm.weight"] = &lw.attention.kv_a_layernorm;
  return out;
}

// AutoAWQ skips the clip search for query/key projections (their errors are amplified by the
// attention softmax). It tests substrings of the whole name, which also catches Mixtral's
// "block_sparse_moe" experts by accident; we test the module's own name.
bool skips_clip(const std::string& prefix) {
  const std::string leaf = prefix.substr(prefix.rfind('.') + 1);
  return leaf.rfind("q_", 0) == 0 || leaf.rfind("k_", 0) == 0;
}

// The layer's output per chunk with the weights it will have in the file: quantized linears as
// their dequantized values, edited dense linears and norms as written (rounded to their dtype).
// Restores the checkpoint's weights and norms afterwards.
std::vector<Tensor> quantized_layer_outputs(LayerState& st, const QuantizedModelParts& parts,
                                            const std::map<std::string, std::vector<float>>& deq) {
  backend::Backend& be = st.model.backend();
  const DType act = be.activation_dtype();
  for (const auto& [p, values] : deq) {
    const HostMatrix& w = st.work.at(p);
    st.linears.at(p)->storage = backend::DenseWeight{be.upload(host_tensor(act, {w.rows, w.cols}, values))};
  }
  std::map<std::string, Tensor*> norms;  // mutable norms of this layer by HF name
  {
    model::LayerWeights& lw = st.model.mutable_weights().layers.at(static_cast<std::size_t>(st.layer));
    const std::string base = "model.layers." + std::to_string(st.layer);
    norms = {{base + ".input_layernorm.weight", &lw.input_layernorm},
             {base + ".post_attention_layernorm.weight", &lw.post_attention_layernorm},
             {base + ".self_attn.q_a_layernorm.weight", &lw.attention.q_a_layernorm},
             {base + ".self_attn.kv_a_layernorm.weight", &lw.attention.kv_a_layernorm}};
  }
  std::map<std::string, Tensor> saved_norms;
  for (const auto& [name, t] : parts.replaced) {
    const std::string prefix = name.substr(0, name.rfind('.'));
    if (const auto it = norms.find(name); it != norms.end()) {
      saved_norms[name] = *it->second;
      *it->second = be.upload(t);
    } else if (st.linears.count(prefix) && !deq.count(prefix)) {
      st.linears.at(prefix)->storage = backend::DenseWeight{be.upload(t)};
    }
  }
  std::vector<Tensor> out;
  for (std::size_t c = 0; c < st.x.size(); ++c) out.push_back(st.forward_current(c));
  for (const auto& [p, w] : st.linears) st.restore_linear(p);
  for (auto& [name, t] : saved_norms) *norms.at(name) = std::move(t);
  return out;
}

}  // namespace

nlohmann::json AwqResult::report() const {
  nlohmann::json g = nlohmann::json::array();
  for (const auto& r : groups) {
    nlohmann::json j = {{"group", r.name},   {"ratio", r.ratio},         {"loss_rtn", r.loss_rtn},
                        {"loss_awq", r.loss_best}, {"non_finite_candidates", r.non_finite}};
    if (!r.note.empty()) j["note"] = r.note;
    g.push_back(std::move(j));
  }
  return {{"groups", g}, {"dense_bytes", dense_bytes}, {"packed_bytes", packed_bytes}};
}

AwqResult quantize_awq(model::Transformer& model, std::span<const int32_t> tokens,
                       int64_t sequences, const AwqOptions& options) {
  validate_spec(options.spec);
  backend::Backend& be = model.backend();
  const model::ModelConfig& config = model.config();
  const int64_t n_tokens = static_cast<int64_t>(tokens.size());
  if (sequences <= 0 || n_tokens == 0 || n_tokens % sequences != 0)
    throw_user_error("AWQ needs calibration windows of one length; found ", n_tokens,
                     " tokens in ", sequences, " windows");
  const int64_t length = n_tokens / sequences;
  const int64_t chunk = std::max<int64_t>(1, options.chunk_sequences);

  // The residual stream into layer 0, per chunk of sequences.
  std::vector<Tensor> xs;
  std::vector<int64_t> seqs;
  for (int64_t s0 = 0; s0 < sequences; s0 += chunk) {
    const int64_t n = std::min(chunk, sequences - s0);
    const Tensor ids = be.upload(
        Tensor::copy_of(DType::kI32, {n * length}, tokens.data() + s0 * length));
    Tensor x = be.empty(DType::kF32, {n * length, config.hidden_size});
    be.embedding(ids, model.weights().embed_tokens, x);
    xs.push_back(std::move(x));
    seqs.push_back(n);
  }

  const std::vector<LinearSite> sites = quantizable_linears(model.weights());
  AwqResult result;
  for (int l = 0; l < config.num_layers; ++l) {
    const auto started = std::chrono::steady_clock::now();
    LayerState st(model, options, l, chunk * length);
    st.x = xs;
    st.sequences = seqs;
    const std::vector<ScaleGroup> groups =
        scale_groups(config, model.weights(), l,
                     GroupOptions{options.mla_o_group, options.block_loss});
    const std::string layer_prefix = "model.layers." + std::to_string(l) + ".";
    std::vector<std::string> quantized;  // this layer's quantizable linears
    for (const auto& site : sites)
      if (site.prefix.rfind(layer_prefix, 0) == 0) quantized.push_back(site.prefix);

    using Clock = std::chrono::steady_clock;
    auto seconds_since = [](Clock::time_point t) {
      return std::chrono::duration<double>(Clock::now() - t).count();
    };
    // 1. One forward of the unmodified layer: the inputs of every group and of every quantized
    //    linear outside a group (MLA's o_proj), and the next layer's input.
    std::map<std::string, const ScaleGroup*> group_of;
    for (const auto& g : groups)
      for (const auto& p : g.linears) group_of[p] = &g;
    std::set<std::string> taps;
    for (const auto& g : groups) {
      if (!g.expert_down) taps.insert(g.input_tap);
      if (!g.inspect_tap.empty()) taps.insert(g.inspect_tap);
    }
    for (const auto& p : quantized)
      if (!group_of.count(p)) taps.insert(input_tap_of(p));
    // routed_clip: the rows routed to each expert (its gate's input in the per-expert path).
    std::map<std::string, std::string> routed_tap;  // expert gate/up prefix -> tap
    if (const auto& moe = model.weights().layers.at(static_cast<std::size_t>(l)).moe;
        moe && ((options.routed_clip && options.clip) || options.gptq))
      for (const auto& e : moe->experts) {
        routed_tap[e.gate.name] = routed_tap[e.up.name] = input_tap_of(e.gate.name);
        taps.insert(input_tap_of(e.gate.name));
      }
    std::vector<Tensor> next;
    for (std::size_t c = 0; c < xs.size(); ++c) {
      CaptureInputs capture(be, taps);
      next.push_back(model.layer_forward(l, xs[c], seqs[c], st.cache, &capture));
      st.inputs.push_back(capture.take());
    }

    const double t_capture = seconds_since(started);
    // 2. Scale search per group (original weights).
    std::vector<std::vector<float>> scales(groups.size());
    for (std::size_t gi = 0; gi < groups.size(); ++gi) {
      AwqGroupReport report;
      scales[gi] = search_scales(st, groups[gi], report);
      result.groups.push_back(std::move(report));
    }

    const double t_search = seconds_since(started) - t_capture;
    // 3. Apply: columns of the group's linears and passengers × s, 1/s into the norm or the
    //    preceding linear's rows.
    const auto norms = layer_norms(model.weights(), l);
    std::set<std::string> modified;
    std::map<std::string, const std::vector<float>*> input_scale;
    for (std::size_t gi = 0; gi < groups.size(); ++gi) {
      const ScaleGroup& g = groups[gi];
      const std::vector<float>& s = scales[gi];
      if (s.empty()) continue;
      const int64_t in = static_cast<int64_t>(s.size());
      std::vector<std::string> scaled = g.linears;
      scaled.insert(scaled.end(), g.passengers.begin(), g.passengers.end());
      for (const auto& p : scaled) {
        HostMatrix& w = st.work.at(p);
        scale_columns(w.values, w.rows, s, false);
        modified.insert(p);
      }
      if (!g.prev_norm.empty()) {
        const Tensor& t = *norms.at(g.prev_norm);
        const Tensor f = (t.device() == Device::kCPU ? t : be.download(t)).to_f32();
        HostMatrix hm{1, in, t.dtype(), {}};
        hm.values.assign(f.data<float>(), f.data<float>() + f.numel());
        for (int64_t j = 0; j < in; ++j) hm.values[j] /= s[j];
        st.norms[g.prev_norm] = std::move(hm);
      } else {
        HostMatrix& w = st.work.at(g.prev_linear);
        for (int64_t k = 0; k < in; ++k) {
          const int64_t r = g.prev_rows.empty() ? k : g.prev_rows[static_cast<std::size_t>(k)];
          for (int64_t j = 0; j < w.cols; ++j) w.values[r * w.cols + j] /= s[k];
        }
        modified.insert(g.prev_linear);
      }
      for (const auto& p : g.linears) input_scale[p] = &s;
    }

    // 4. Clip search on sampled input rows (divided by the group's s).
    if (options.clip) {
      for (const auto& p : quantized) {
        const std::vector<float>& values = st.work.at(p).values;
        if ((skips_clip(p) && !options.clip_qk) || !std::all_of(values.begin(), values.end(),
                                          [](float v) { return std::isfinite(v); }))
          continue;
        const auto git = group_of.find(p);
        int64_t total = 0;
        for (const auto& x : xs) total += x.size(0);
        std::string routed;  // the expert's routed-rows tap when used
        if (const auto rt = options.routed_clip ? routed_tap.find(p) : routed_tap.end();
            rt != routed_tap.end()) {
          int64_t n_routed = 0;
          for (const auto& m : st.inputs)
            if (const auto it = m.find(rt->second); it != m.end()) n_routed += it->second.size(0);
          if (n_routed >= options.clip_min_routed) {
            routed = rt->second;
            total = n_routed;
          }
        }
        const int64_t step = std::max<int64_t>(1, total / std::max<int64_t>(1, options.clip_rows));
        const int64_t in = st.work.at(p).cols;
        // Every step-th calibration row, gathered on the device so only the sample comes back.
        std::vector<float> sample;
        int64_t n = 0, row = 0;
        for (std::size_t c = 0; c < xs.size(); ++c) {
          if (!routed.empty() && !st.inputs[c].count(routed)) continue;  // none routed here
          const Tensor in_c = !routed.empty()           ? st.inputs[c].at(routed)
                              : git != group_of.end() ? st.group_input(*git->second, c)
                                                      : st.inputs[c].at(input_tap_of(p));
          std::vector<int32_t> picked;
          for (int64_t r = 0; r < in_c.size(0); ++r, ++row)
            if (row % step == 0) picked.push_back(static_cast<int32_t>(r));
          if (picked.empty()) continue;
          const auto k = static_cast<int64_t>(picked.size());
          Tensor rows_c = be.empty(in_c.dtype(), {k, in});
          be.gather_rows(in_c, be.upload(Tensor::copy_of(DType::kI32, {k}, picked.data())), rows_c);
          const Tensor host = be.download(rows_c);
          for (int64_t i = 0; i < k * in; ++i) sample.push_back(element_f32(host, i));
          n += k;
        }
        if (const auto it = input_scale.find(p); it != input_scale.end())
          scale_columns(sample, n, *it->second, true);
        search_clip(st, p, sample, n);
      }
    }

    const double t_clip = seconds_since(started) - t_capture - t_search;
    // GPTQ: the input Hessian of linear p (x / s over the calibration rows, or the rows routed to
    // a routed expert's gate/up when at least `in` reach it), cached per distinct input.
    std::map<std::string, std::vector<double>> hessians;
    double t_gptq = 0.0;
    auto hessian_for = [&](const std::string& p) -> const std::vector<double>& {
      const int64_t in = st.work.at(p).cols;
      const auto git = group_of.find(p);
      std::string routed;
      if (const auto rt = routed_tap.find(p); rt != routed_tap.end()) {
        int64_t n_routed = 0;
        for (const auto& m : st.inputs)
          if (const auto it = m.find(rt->second); it != m.end()) n_routed += it->second.size(0);
        if (n_routed >= in) routed = rt->second;
      }
      const std::string key = !routed.empty()           ? "routed:" + routed
                              : git != group_of.end() ? "group:" + git->second->name
                                                      : "tap:" + input_tap_of(p);
      if (const auto it = hessians.find(key); it != hessians.end()) return it->second;
      HessianAccumulator acc(in);
      std::vector<float> rows;
      for (std::size_t c = 0; c < xs.size(); ++c) {
        if (!routed.empty() && !st.inputs[c].count(routed)) continue;
        const Tensor in_c = !routed.empty()           ? st.inputs[c].at(routed)
                            : git != group_of.end() ? st.group_input(*git->second, c)
                                                    : st.inputs[c].at(input_tap_of(p));
        const Tensor host = be.download(in_c);
        const int64_t n = in_c.size(0);
        rows.resize(static_cast<std::size_t>(n * in));
        for (int64_t i = 0; i < n * in; ++i) rows[static_cast<std::size_t>(i)] = element_f32(host, i);
        if (const auto it = input_scale.find(p); it != input_scale.end())
          scale_columns(rows, n, *it->second, true);
        acc.add(rows.data(), n);
      }
      return hessians.emplace(key, acc.hessian()).first->second;
    };

    // 5. Quantize and pack; weights left dense but edited are written back as they are.
    std::map<std::string, std::vector<float>> dequantized;  // for the sequential forward
    for (const auto& p : quantized) {
      const HostMatrix& w = st.work.at(p);
      GroupQuantSpec spec = options.spec;
      spec.group_size = group_size_of(st, p);
      const bool finite = std::all_of(w.values.begin(), w.values.end(),
                                      [](float v) { return std::isfinite(v); });
      if (!finite)
        log::warn("AWQ: ", p, " has non-finite weights; it stays unquantized (as it is)");
      if (spec.group_size == 0 || !finite) {
        result.parts.not_converted.push_back(p);
        if (modified.count(p))
          result.parts.replaced[p + ".weight"] = host_tensor(w.dtype, {w.rows, w.cols}, w.values);
        continue;
      }
      QuantizedMatrix qm;
      if (options.gptq) {
        const auto t0 = Clock::now();
        qm = gptq_quantize(w.values.data(), w.rows, w.cols, hessian_for(p), spec,
                           options.gptq_options, p);
        t_gptq += seconds_since(t0);
      } else {
        qm = quantize_groups(w.values.data(), w.rows, w.cols, spec, p);
      }
      const backend::AwqWeight packed = pack_awq(qm);
      if (options.sequential) dequantized[p] = dequantize(qm);
      result.dense_bytes += w.rows * w.cols * static_cast<int64_t>(dtype_bytes_for(w.dtype, 1));
      result.packed_bytes += static_cast<int64_t>(packed.qweight.nbytes() + packed.qzeros.nbytes() +
                                                  packed.scales.nbytes());
      result.parts.quantized[p] = packed;
      modified.erase(p);
    }
    for (const auto& p : modified) {  // passengers (routers), unquantized preceding linears
      const HostMatrix& w = st.work.at(p);
      result.parts.replaced[p + ".weight"] = host_tensor(w.dtype, {w.rows, w.cols}, w.values);
    }
    for (const auto& [name, hm] : st.norms)
      result.parts.replaced[name] = host_tensor(hm.dtype, {hm.cols}, hm.values);

    // 6. Sequential: the next layer's input is this layer's output as quantized (the file's
    //    weights and norms), not the full-precision one.
    if (options.sequential) next = quantized_layer_outputs(st, result.parts, dequantized);
    xs = std::move(next);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    log::info("awq: layer ", l + 1, "/", config.num_layers, ": ", groups.size(), " groups, ",
              quantized.size(), " linears quantized in ", secs, " s (calibration forward ",
              t_capture, " s, scale search ", t_search, " s, clip search ", t_clip, " s",
              options.gptq ? str(", GPTQ ", t_gptq, " s for ", hessians.size(), " Hessians") : "",
              ")");
  }
  return result;
}

}  // namespace refinery::quantize
