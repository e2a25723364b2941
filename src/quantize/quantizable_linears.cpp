#include "quantize/quantizable_linears.hpp"

namespace refinery::quantize {

namespace {

void add(std::vector<LinearSite>& sites, const backend::LinearWeight& w) {
  if (!w.defined()) return;
  sites.push_back({w.name, &w, w.out_features(), w.in_features()});
}

void add_mlp(std::vector<LinearSite>& sites, const model::MlpWeights& m) {
  add(sites, m.gate_proj);
  add(sites, m.up_proj);
  add(sites, m.down_proj);
}

}  // namespace

std::vector<LinearSite> quantizable_linears(const model::ModelWeights& weights) {
  std::vector<LinearSite> sites;
  for (const model::LayerWeights& layer : weights.layers) {
    const model::AttentionWeights& a = layer.attention;
    for (const backend::LinearWeight* w : {&a.q_proj, &a.k_proj, &a.v_proj, &a.q_a_proj, &a.q_b_proj,
                                           &a.kv_a_proj_with_mqa, &a.kv_b_proj, &a.o_proj})
      add(sites, *w);
    if (layer.mlp) add_mlp(sites, *layer.mlp);
    if (layer.moe) {
      for (const backend::ExpertWeights& e : layer.moe->experts) {
        add(sites, e.gate);
        add(sites, e.up);
        add(sites, e.down);
      }
      if (layer.moe->shared) add_mlp(sites, *layer.moe->shared);
    }
  }
  return sites;
}

std::vector<std::string> never_quantized_linears(const model::ModelWeights& weights) {
  std::vector<std::string> names;
  for (const model::LayerWeights& layer : weights.layers) {
    if (!layer.moe) continue;
    if (layer.moe->router.defined()) names.push_back(layer.moe->router.name);
    if (layer.moe->shared_gate.defined()) names.push_back(layer.moe->shared_gate.name);
  }
  return names;
}

}  // namespace refinery::quantize
