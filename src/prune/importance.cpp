// The importance pass: the calibration loop (calibration_pass.hpp) with the importance observer,
// and the report's JSON.
#include "prune/importance.hpp"

#include <algorithm>

#include "engine/core/error.hpp"
#include "prune/calibration_pass.hpp"
#include "prune/importance_observer.hpp"

namespace refinery::prune {

ImportanceReport compute_importance(model::Transformer& model, std::span<const int32_t> tokens,
                                    const CalibrationOptions& options) {
  ImportanceObserver observer(model);
  const CalibrationRun run = run_calibration(model, tokens, options, observer,
                                             [&](int64_t len) { observer.end_window(len); });
  ImportanceReport report;
  report.model_type = model.config().model_type;
  report.tokens = run.tokens;
  report.windows = run.windows;
  report.seq_len = run.seq_len;
  observer.finish(report);
  return report;
}

// ---- JSON ----

namespace {

nlohmann::json channels_json(const ChannelScores& c) {
  return {{"mean_abs", c.mean_abs}, {"rms", c.rms}};
}

ChannelScores channels_from(const nlohmann::json& j) {
  ChannelScores c;
  if (j.is_null()) return c;
  c.mean_abs = j.at("mean_abs").get<std::vector<double>>();
  c.rms = j.at("rms").get<std::vector<double>>();
  return c;
}

}  // namespace

nlohmann::json report_to_json(const ImportanceReport& r) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerImportance& l : r.layers) {
    nlohmann::json j = {{"layer", l.layer},
                        {"moe", l.moe},
                        {"block_score", l.block_score},
                        {"head_norm", l.head_norm},
                        {"kv_group_norm", l.kv_group_norm}};
    if (!l.mlp_channels.empty()) j["mlp_channels"] = channels_json(l.mlp_channels);
    if (!l.shared_channels.empty()) j["shared_channels"] = channels_json(l.shared_channels);
    if (l.experts) {
      nlohmann::json ch = nlohmann::json::array();
      for (const ChannelScores& c : l.experts->channels) ch.push_back(channels_json(c));
      j["experts"] = {{"routed_tokens", l.experts->routed_tokens},
                      {"frequency", l.experts->frequency},
                      {"gate_norm", l.experts->gate_norm},
                      {"channels", ch}};
    }
    layers.push_back(std::move(j));
  }
  return {{"format", "refinery.importance.v1"},
          {"model", r.model},
          {"model_type", r.model_type},
          {"tokens", r.tokens},
          {"windows", r.windows},
          {"seq_len", r.seq_len},
          {"embedding_channels", r.embedding_channels},
          {"layers", layers}};
}

ImportanceReport report_from_json(const nlohmann::json& j, const std::string& source) {
  try {
    if (j.value("format", std::string()) != "refinery.importance.v1")
      throw_user_error(source, " is not an importance report (\"format\" is not "
                       "\"refinery.importance.v1\"); write one with `refine prune --report`");
    ImportanceReport r;
    r.model = j.value("model", std::string());
    r.model_type = j.value("model_type", std::string());
    r.tokens = j.at("tokens").get<int64_t>();
    r.windows = j.at("windows").get<int64_t>();
    r.seq_len = j.at("seq_len").get<int64_t>();
    r.embedding_channels = j.at("embedding_channels").get<std::vector<double>>();
    for (const nlohmann::json& lj : j.at("layers")) {
      LayerImportance l;
      l.layer = lj.at("layer").get<int>();
      l.moe = lj.at("moe").get<bool>();
      l.block_score = lj.at("block_score").get<double>();
      l.head_norm = lj.at("head_norm").get<std::vector<double>>();
      l.kv_group_norm = lj.at("kv_group_norm").get<std::vector<double>>();
      l.mlp_channels = channels_from(lj.value("mlp_channels", nlohmann::json()));
      l.shared_channels = channels_from(lj.value("shared_channels", nlohmann::json()));
      if (lj.contains("experts")) {
        const nlohmann::json& ej = lj.at("experts");
        ExpertScores e;
        e.routed_tokens = ej.at("routed_tokens").get<std::vector<int64_t>>();
        e.frequency = ej.at("frequency").get<std::vector<double>>();
        e.gate_norm = ej.at("gate_norm").get<std::vector<double>>();
        for (const nlohmann::json& c : ej.at("channels")) e.channels.push_back(channels_from(c));
        l.experts = std::move(e);
      }
      r.layers.push_back(std::move(l));
    }
    return r;
  } catch (const nlohmann::json::exception& e) {
    throw_user_error(source, " is not a valid importance report (", e.what(), ")");
  }
}

}  // namespace refinery::prune
