#pragma once
// The report at the end of a recipe run: every artifact (the input model and each model a step
// made) compared with the teacher, as Markdown (stdout), JSON and a self-contained HTML page with
// the training and evaluation curves as inline SVG. Rendering only: the runner
// (cli/cmd_recipe.cpp) measures and fills the rows.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "recipe/svg_chart.hpp"

namespace refinery::recipe {

struct ArtifactRow {
  std::string name;  // "teacher" (the input) or the step name
  std::string verb;  // "input", "prune", "distill", "quantize"
  std::string path;
  std::string model_type;
  int64_t params_total = 0, params_active = 0;
  int64_t bytes_on_disk = 0;
  std::optional<double> perplexity, kl_mean, top1_agreement;
  std::optional<double> prefill_tokens_per_s, decode_tokens_per_s;
};

struct StepRecord {
  std::string name, verb, output;
  double seconds = 0.0;
  bool reused = false;  // finished in an earlier run (--resume)
};

struct Report {
  std::string recipe, description, run_dir, device, created;
  std::string eval_data;  // what the perplexities were measured on
  std::vector<StepRecord> steps;
  std::vector<ArtifactRow> artifacts;  // the teacher first
  std::vector<Chart> charts;
};

std::string render_markdown(const Report& report);
nlohmann::json report_to_json(const Report& report);
std::string render_html(const Report& report);

// The training-loss and held-out-perplexity charts of a distill step's train/metrics.jsonl (see
// distill/trainer.hpp); a missing or unreadable log gives no charts, malformed lines are skipped.
std::vector<Chart> distill_charts(const std::string& step_name,
                                  const std::filesystem::path& metrics_jsonl);

// Bytes of every regular file under `dir` (a file: its size), excluding training state
// (train/ of a distill output): what a deployment copies.
int64_t model_bytes_on_disk(const std::filesystem::path& dir);

}  // namespace refinery::recipe
