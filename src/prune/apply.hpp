#pragma once
// Applying a prune plan: `prune(model, plan) -> model` (DESIGN §1.3). Reads a HF model directory
// (weights memory-mapped), writes the pruned one: the kept tensors sliced (tensor_map.hpp) in the
// parent's dtypes, config.json with the new counts (pruned_config.hpp), the parent's tokenizer and
// other small files, and refinery.json (provenance). Everything is written into a temporary
// directory next to `out` and renamed into place at the end, so `out` is either absent/untouched
// or complete.

#include <cstdint>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "prune/plan.hpp"

namespace refinery::prune {

struct ApplyOptions {
  bool force = false;          // replace an existing non-empty `out`
  nlohmann::json provenance;   // refinery.json; "pass": "prune" and "parent" are filled if absent
};

struct ApplyResult {
  int64_t parameters_before = 0;  // elements of every tensor of the parent (MTP layers included)
  int64_t parameters_after = 0;
  int64_t tensors_written = 0;
  int dropped_mtp_layers = 0;
  nlohmann::json config;          // the written config.json
};

// User error when `out` is a file, or a non-empty directory without `force`, or the model dir.
void check_output_directory(const std::filesystem::path& out, const std::filesystem::path& model_dir,
                            bool force);

ApplyResult apply_plan(const std::filesystem::path& model_dir, const PrunePlan& plan,
                       const std::filesystem::path& out, const ApplyOptions& options = {});

}  // namespace refinery::prune
