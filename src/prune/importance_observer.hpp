#pragma once
// Private to src/prune: the tap observer of the importance pass (importance.hpp). It knows which
// tap carries what from the model's weights (the tap names are the weights' HF module names, so
// every family's naming, mixtral's block_sparse_moe.experts.E.w2 included, is handled by one
// lookup), and folds each delivered activation into running sums.

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model/transformer.hpp"
#include "prune/importance.hpp"

namespace refinery::prune {

class ImportanceObserver : public model::TapObserver {
 public:
  explicit ImportanceObserver(model::Transformer& model);

  bool wants(std::string_view name) const override;
  void observe(std::string_view name, const Tensor& value) override;

  // Adds the window's token count (the denominators of the per-token means).
  void end_window(int64_t tokens) { tokens_ += tokens; }
  // The means so far, in `report` (model/tokens/windows fields are the caller's).
  void finish(ImportanceReport& report) const;

 private:
  enum class Role {
    kLayerInput, kLayerOutput, kHeads, kNormOutput, kMlpDown, kSharedDown, kExpertDown,
    kRouteExperts, kRouteWeights
  };
  struct TapRole {
    Role role;
    int layer = 0;
    int expert = 0;
  };
  struct ChannelSums {
    std::vector<double> abs, sq;
    int64_t rows = 0;
    void add(const float* x, int64_t rows, int64_t cols);
    ChannelScores scores(int64_t width) const;
  };
  struct LayerSums {
    double one_minus_cos = 0.0;
    std::vector<float> input;  // the current window's layer input [T, hidden], until the output
    std::vector<double> head_norm;
    ChannelSums mlp, shared;
    std::vector<int64_t> routed;
    std::vector<double> gate_norm;
    std::vector<ChannelSums> expert_channels;
    std::vector<int32_t> route_experts;  // the current window's choice [T, k]
    std::vector<float> route_weights;    // [T, k]
  };

  void expert_down(LayerSums& l, int layer, int expert, const Tensor& x);
  void add_role(const std::string& tap_name, Role role, int layer, int expert = 0);

  model::Transformer& model_;
  std::map<std::string, TapRole, std::less<>> roles_;
  std::vector<LayerSums> layers_;
  std::vector<double> embedding_abs_;  // [hidden] sum over norm outputs and tokens of |x|
  int64_t tokens_ = 0;
};

}  // namespace refinery::prune
