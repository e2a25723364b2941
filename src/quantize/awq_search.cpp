// AWQ: the per-layer state and the scale search (awq.hpp steps 1-2).
#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/core/log.hpp"
#include "quantize/awq_layer.hpp"

namespace refinery::quantize::awq_detail {

namespace {

// Asks for the per-expert inputs so that Transformer::moe runs expert by expert through
// Backend::linear (no stacked copy of the experts is cached on the device for weights that
// change between calls); records nothing.
class PerExpertPath final : public model::TapObserver {
 public:
  bool wants(std::string_view name) const override {
    return name.find(".experts.") != std::string_view::npos;
  }
  void observe(std::string_view, const Tensor&) override {}
};

}  // namespace

LayerState::LayerState(model::Transformer& m, const AwqOptions& o, int l, int64_t max_rows)
    : model(m), options(o), layer(l), cache(m.make_cache(max_rows)) {
  model::LayerWeights& lw = m.mutable_weights().layers.at(static_cast<std::size_t>(l));
  auto add = [&](backend::LinearWeight& w) {
    if (w.defined()) linears[w.name] = &w;
  };
  model::AttentionWeights& a = lw.attention;
  for (auto* w : {&a.q_proj, &a.k_proj, &a.v_proj, &a.q_a_proj, &a.q_b_proj,
                  &a.kv_a_proj_with_mqa, &a.kv_b_proj, &a.o_proj})
    add(*w);
  if (lw.mlp) {
    add(lw.mlp->gate_proj);
    add(lw.mlp->up_proj);
    add(lw.mlp->down_proj);
  }
  if (lw.moe) {
    add(lw.moe->router);
    add(lw.moe->shared_gate);
    for (auto& e : lw.moe->experts) {
      add(e.gate);
      add(e.up);
      add(e.down);
    }
    if (lw.moe->shared) {
      add(lw.moe->shared->gate_proj);
      add(lw.moe->shared->up_proj);
      add(lw.moe->shared->down_proj);
    }
  }
  for (const auto& [prefix, w] : linears) {
    const auto* dense = std::get_if<backend::DenseWeight>(&w->storage);
    if (dense == nullptr)
      throw_user_error("AWQ: ", prefix, " is stored as ", w->describe(),
                       "; AWQ quantizes a dense bf16/f16/f32 checkpoint (dequantize it first)");
    const Tensor host = dense->weight.device() == Device::kCPU ? dense->weight
                                                               : m.backend().download(dense->weight);
    const Tensor f = host.to_f32();
    HostMatrix hm{w->out_features(), w->in_features(), dense->weight.dtype(), {}};
    hm.values.assign(f.data<float>(), f.data<float>() + f.numel());
    // The device copy the search quantizes (f32 on the CPU, bf16 on CUDA).
    const DType act = m.backend().activation_dtype();
    Tensor host_act = Tensor::empty(act, {hm.rows, hm.cols});
    convert_from_f32(act, hm.values.data(), host_act.mutable_data(), hm.values.size());
    device_[prefix] = m.backend().upload(host_act);
    work[prefix] = std::move(hm);
    original_[prefix] = w->storage;
  }
}

Tensor LayerState::group_input(const ScaleGroup& g, std::size_t c) {
  if (!g.expert_down) return inputs.at(c).at(g.input_tap);
  // swiglu(gate_e(h), up_e(h)) for every row of the MoE input h.
  backend::Backend& be = model.backend();
  const model::MoeWeights& moe =
      *model.weights().layers.at(static_cast<std::size_t>(layer)).moe;
  const Tensor& h = inputs.at(c).at(input_tap_of(moe.router.name));
  const backend::ExpertWeights& e = moe.experts.at(static_cast<std::size_t>(*g.expert_down));
  Tensor gate = be.empty(be.activation_dtype(), {h.size(0), e.gate.out_features()});
  Tensor up = be.empty(be.activation_dtype(), {h.size(0), e.up.out_features()});
  be.linear(h, e.gate, gate);
  be.linear(h, e.up, up);
  be.swiglu(gate, up, gate);
  return gate;
}

void LayerState::set_fake_quantized(const std::string& prefix, const Tensor& s, int group_size) {
  backend::Backend& be = model.backend();
  const Tensor& w = device_.at(prefix);
  Tensor out = be.empty(be.activation_dtype(), w.shape());
  be.group_fake_quantize(w, s, {options.spec.bits, group_size, options.spec.zero_point, 1.0f}, out);
  linears.at(prefix)->storage = backend::DenseWeight{out};
}

void LayerState::restore_linear(const std::string& prefix) {
  linears.at(prefix)->storage = original_.at(prefix);
}

std::vector<Tensor> LayerState::inspect(const ScaleGroup& g, std::size_t c, const Tensor& in) {
  backend::Backend& be = model.backend();
  switch (g.inspect) {
    case Inspect::kAttention:
      return {model.attention_block(layer, in, sequences.at(c), cache)};
    case Inspect::kMlp: {
      PerExpertPath per_expert;
      return {model.mlp_block(layer, in, &per_expert)};
    }
    case Inspect::kLinears: {
      std::vector<Tensor> out;
      for (const auto& prefix : g.linears) {
        const backend::LinearWeight& w = *linears.at(prefix);
        Tensor y = be.empty(be.activation_dtype(), {in.size(0), w.out_features()});
        be.linear(in, w, y);
        out.push_back(std::move(y));
      }
      return out;
    }
  }
  return {};
}

Tensor LayerState::forward_current(std::size_t c) {
  PerExpertPath per_expert;  // expert weights differ from any cached stacked copy
  return model.layer_forward(layer, x.at(c), sequences.at(c), cache, &per_expert);
}

void scale_columns(std::vector<float>& w, int64_t rows, const std::vector<float>& s, bool divide) {
  const auto cols = static_cast<int64_t>(s.size());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    float* row = w.data() + r * cols;
    if (divide)
      for (int64_t j = 0; j < cols; ++j) row[j] /= s[j];
    else
      for (int64_t j = 0; j < cols; ++j) row[j] *= s[j];
  }
}

float element_f32(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kF32:
      return t.data<float>()[i];
    case DType::kBF16:
      return bf16_to_f32(static_cast<const uint16_t*>(t.data())[i]);
    default:
      throw_internal_error("AWQ: activations must be f32 or bf16, found ", t.describe());
  }
}

int group_size_of(const LayerState& st, const std::string& prefix) {
  const HostMatrix& w = st.work.at(prefix);
  return usable_group_size(w.cols, w.rows, st.options.spec);
}

namespace {

// w_mean of a group: |w| / max|w| within each quantization group of each row, averaged over the
// rows of every linear of the group ([in] values). The rows of all linears are cut into blocks of
// kRows (fixed, not derived from the thread count); each block sums its rows into its own [in]
// double partial, reading its rows contiguously, and the partials are added in block order, so
// the result does not depend on the thread count (same values as a serial loop to rounding).
std::vector<double> weight_group_means(const LayerState& st, const ScaleGroup& g) {
  const int64_t in = st.work.at(g.linears.front()).cols;
  constexpr int64_t kRows = 256;
  struct Block {
    const HostMatrix* w;
    int gs;
    int64_t r0, r1;
  };
  std::vector<Block> blocks;
  int64_t w_rows = 0;
  for (const auto& p : g.linears) {
    const HostMatrix& w = st.work.at(p);
    const int gs = group_size_of(st, p);
    for (int64_t r0 = 0; r0 < w.rows; r0 += kRows)
      blocks.push_back({&w, gs, r0, std::min(w.rows, r0 + kRows)});
    w_rows += w.rows;
  }
  // Waves of kWave blocks bound the partials' memory (MoE groups hold thousands of blocks).
  constexpr int64_t kWave = 128;
  const auto n_blocks = static_cast<int64_t>(blocks.size());
  std::vector<double> partial(static_cast<std::size_t>(std::min(n_blocks, kWave) * in));
  std::vector<double> w_mean(static_cast<std::size_t>(in), 0.0);
  for (int64_t b0 = 0; b0 < n_blocks; b0 += kWave) {
    const int64_t wave = std::min(kWave, n_blocks - b0);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < wave; ++i) {
      const Block& blk = blocks[static_cast<std::size_t>(b0 + i)];
      double* acc = partial.data() + i * in;
      std::fill(acc, acc + in, 0.0);
      for (int64_t r = blk.r0; r < blk.r1; ++r)
        for (int64_t c0 = 0; c0 < in; c0 += blk.gs) {
          const float* row = blk.w->values.data() + r * in + c0;
          float hi = 0.0f;
          for (int j = 0; j < blk.gs; ++j) hi = std::max(hi, std::fabs(row[j]));
          for (int j = 0; j < blk.gs; ++j) acc[c0 + j] += std::fabs(row[j]) / (hi + 1e-6);
        }
    }
    for (int64_t i = 0; i < wave; ++i)
      for (int64_t j = 0; j < in; ++j) w_mean[j] += partial[i * in + j];
  }
  for (auto& v : w_mean) v /= static_cast<double>(w_rows);
  return w_mean;
}

}  // namespace

std::vector<float> search_scales(LayerState& st, const ScaleGroup& g, AwqGroupReport& report) {
  backend::Backend& be = st.model.backend();
  report.name = g.name;
  const int64_t in = st.work.at(g.linears.front()).cols;
  for (const auto& p : g.linears)
    if (group_size_of(st, p) == 0) {
      report.note = p + " stays unquantized (its shape fits no group size); group not scaled";
      return {};
    }

  // x_mean: mean |x| per input channel over all calibration rows. The sums are reduced where the
  // activations live (Backend::column_abs_sums adds chunk after chunk into one f32 [in] vector);
  // only those [in] floats come back.
  Tensor x_sums = be.empty(DType::kF32, {in});
  be.fill_zero(x_sums);
  // The group's input per chunk, made once: for a routed expert's down projection it is
  // swiglu(gate_e(h), up_e(h)), two GEMMs the 21 candidates would otherwise each redo.
  std::vector<Tensor> group_in;
  int64_t rows = 0;
  for (std::size_t c = 0; c < st.x.size(); ++c) {
    group_in.push_back(st.group_input(g, c));
    be.column_abs_sums(group_in.back(), x_sums);
    rows += group_in.back().size(0);
  }
  const Tensor x_sums_host = be.download(x_sums);
  std::vector<double> x_mean(static_cast<std::size_t>(in));
  for (int64_t j = 0; j < in; ++j)
    x_mean[j] = static_cast<double>(x_sums_host.data<float>()[j]) /
                static_cast<double>(std::max<int64_t>(rows, 1));

  const std::vector<double> w_mean = weight_group_means(st, g);

  // The unmodified outputs, then the loss of one candidate s (empty s: plain RTN).
  // The inspected module's input: the group's own input, or its block's (block_loss).
  auto inspect_in = [&](std::size_t c) -> const Tensor& {
    return g.inspect_tap.empty() ? group_in[c] : st.inputs.at(c).at(g.inspect_tap);
  };
  std::vector<std::vector<Tensor>> reference;
  double elements = 0.0;
  for (std::size_t c = 0; c < st.x.size(); ++c) {
    reference.push_back(st.inspect(g, c, inspect_in(c)));
    for (const Tensor& t : reference.back()) elements += static_cast<double>(t.numel());
  }
  auto candidate_loss_impl = [&](const std::vector<float>& s) {
    const Tensor s_device =
        s.empty() ? Tensor() : be.upload(Tensor::copy_of(DType::kF32, {in}, s.data()));
    for (const auto& p : g.linears) st.set_fake_quantized(p, s_device, group_size_of(st, p));
    double total = 0.0;
    for (std::size_t c = 0; c < st.x.size(); ++c) {
      const std::vector<Tensor> out = st.inspect(g, c, inspect_in(c));
      for (std::size_t i = 0; i < out.size(); ++i)
        total += be.sum_squared_difference(out[i], reference[c][i]);
    }
    for (const auto& p : g.linears) st.restore_linear(p);
    return total / std::max(elements, 1.0);
  };

  // A candidate whose scaled weights or outputs are not finite (fake_quantize refuses
  // non-finite weights) scores NaN: it is skipped, never fatal.
  auto loss_of = [&](const std::vector<float>& s) -> double {
    try {
      return candidate_loss_impl(s);
    } catch (const Error&) {
      for (const auto& p : g.linears) st.restore_linear(p);
      return std::numeric_limits<double>::quiet_NaN();
    }
  };

  report.loss_rtn = loss_of({});
  double best = std::isfinite(report.loss_rtn) ? report.loss_rtn
                                               : std::numeric_limits<double>::infinity();
  if (!std::isfinite(report.loss_rtn)) ++report.non_finite;
  std::vector<float> best_s;
  for (int i = 0; i < st.options.grid; ++i) {
    const double ratio = static_cast<double>(i) / st.options.grid;
    std::vector<float> s(static_cast<std::size_t>(in));
    double hi = 0.0, lo = std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < in; ++j) {
      double v = st.options.duo_scaling
                     ? std::pow(x_mean[j], ratio) / (std::pow(w_mean[j], 1.0 - ratio) + 1e-4)
                     : std::pow(x_mean[j], ratio);
      v = std::max(v, 1e-4);
      s[j] = static_cast<float>(v);
      hi = std::max(hi, v);
      lo = std::min(lo, v);
    }
    const double norm = std::sqrt(hi * lo);
    for (auto& v : s) v = static_cast<float>(v / norm);
    const double loss = loss_of(s);
    if (!std::isfinite(loss)) {
      ++report.non_finite;
      continue;
    }
    if (loss < best) {
      best = loss;
      best_s = s;
      report.ratio = ratio;
    }
  }
  report.loss_best = std::isfinite(best) ? best : report.loss_rtn;
  if (!std::isfinite(best)) {
    report.note = "every candidate gave a non-finite loss; the group stays unscaled";
    log::warn("AWQ: ", g.name, ": ", report.note);
  }
  return best_s;
}

}  // namespace refinery::quantize::awq_detail
