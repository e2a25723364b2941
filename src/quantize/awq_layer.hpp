#pragma once
// Private to the AWQ pass (awq.cpp, awq_search.cpp, awq_clip.cpp): the state of one decoder layer
// while it is quantized.

#include <map>
#include <span>
#include <string>
#include <vector>

#include "engine/model/transformer.hpp"
#include "quantize/awq.hpp"
#include "quantize/awq_groups.hpp"

namespace refinery::quantize::awq_detail {

// An f32 host copy of one weight being edited ([rows, cols] row-major).
struct HostMatrix {
  int64_t rows = 0, cols = 0;
  DType dtype = DType::kBF16;  // the checkpoint's dtype (written back in it)
  std::vector<float> values;
};

struct LayerState {
  model::Transformer& model;
  const AwqOptions& options;
  int layer = 0;
  // The calibration chunks: residual rows into this layer (f32, backend device) and how many
  // sequences each holds.
  std::vector<Tensor> x;
  std::vector<int64_t> sequences;
  // Per chunk, the recorded inputs by tap name (activation dtype, backend device).
  std::vector<std::map<std::string, Tensor>> inputs;
  // Every linear of the layer by HF prefix (pointers into model.mutable_weights()), and f32 host
  // copies of the weights being edited (linears and norms, by HF prefix / tensor name).
  std::map<std::string, backend::LinearWeight*> linears;
  std::map<std::string, HostMatrix> work;
  std::map<std::string, HostMatrix> norms;
  model::KvCache cache;

  LayerState(model::Transformer& m, const AwqOptions& o, int l, int64_t max_rows);
  // The group's input for chunk c ([rows, in], backend device): a recorded tap, or for a routed
  // expert's down projection swiglu(gate_e(h), up_e(h)) over ALL rows of the MoE input h.
  Tensor group_input(const ScaleGroup& g, std::size_t c);
  // Sets linear `prefix` to Q(W·diag(s))·diag(s)^-1 of its checkpoint weight W
  // (Backend::group_fake_quantize on the device; s: f32 [in] on the device, or undefined).
  void set_fake_quantized(const std::string& prefix, const Tensor& s, int group_size);
  // Puts back the checkpoint's weight of `prefix`.
  void restore_linear(const std::string& prefix);
  // The inspected outputs of group g for chunk c, whose group input is `in` (group_input(g, c),
  // made once by the caller), with the weights currently set.
  std::vector<Tensor> inspect(const ScaleGroup& g, std::size_t c, const Tensor& in);
  // Layer `layer` on chunk c's residual rows x[c] with the weights currently set (the routed
  // experts one by one: their weights may differ from the checkpoint's).
  Tensor forward_current(std::size_t c);

 private:
  std::map<std::string, backend::LinearStorage> original_;
  std::map<std::string, Tensor> device_;  // the checkpoint weights on the device (activation dtype)
};


// Step 2 of awq.hpp for one group: the chosen s (empty: no scaling) and its report.
std::vector<float> search_scales(LayerState& st, const ScaleGroup& g, AwqGroupReport& report);
// Step 4 for linear `prefix` (its work copy already scaled), whose input rows are `x` (f32 host
// [n, in], already divided by the group's s). Clamps the work copy in place.
void search_clip(LayerState& st, const std::string& prefix, const std::vector<float>& x, int64_t n);

// out_values := w [out, in] with each quantization group of gs values clamped to
// [r·min, r·max] (an end on the far side of 0 kept), r = ratios[o·(in/gs) + g] (one ratio: all).
// out_values may be w itself.
void clamp_groups(const std::vector<float>& w, std::vector<float>& out_values, int64_t out,
                  int64_t in, int gs, std::span<const float> ratios);
void clamp_groups(const std::vector<float>& w, std::vector<float>& out_values, int64_t out,
                  int64_t in, int gs, float ratio);

// w [rows, s.size()] := w · diag(s), or w · diag(s)^-1 with `divide` (in parallel over rows).
void scale_columns(std::vector<float>& w, int64_t rows, const std::vector<float>& s, bool divide);

// Element i of a host f32 or bf16 tensor as f32 (activations downloaded from the backend).
float element_f32(const Tensor& t, int64_t i);

// The group size linear `prefix` is quantized with (0: stays dense).
int group_size_of(const LayerState& st, const std::string& prefix);

}  // namespace refinery::quantize::awq_detail
