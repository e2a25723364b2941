#pragma once
// The concrete plan of a recipe run (cli side of src/recipe): each step's folder, output and the
// exact `refine` arguments, the checks that need the option parser or the filesystem, and the
// memory estimate against the device. Used by cmd_recipe.cpp.

#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "recipe/recipe.hpp"

namespace refinery::cli {

struct PlannedStep {
  const recipe::Step* step = nullptr;
  recipe::Output output_kind = recipe::Output::kModel;
  std::filesystem::path folder;  // run_dir / "NN-name"
  std::filesystem::path output;  // folder / "model" | "cache.h5" | "eval.json"
  std::vector<std::string> args; // `refine` arguments, without the program name
};

struct RunPlan {
  std::filesystem::path run_dir;
  std::filesystem::path input_model;  // absolute
  std::string device;                  // cpu or cuda (auto resolved)
  std::filesystem::path report_data;   // the report's held-out data, absolute; empty: none
  std::vector<PlannedStep> steps;
};

// The option parser's view of each recipe verb (long options, flags).
recipe::Schemas recipe_schemas();

// Resolves references and relative paths, assigns folders and outputs, adds --out/--json/--device.
RunPlan plan_run(const recipe::Recipe& recipe, const std::filesystem::path& input_model,
                 const std::string& device, const std::filesystem::path& run_dir);

// Before anything runs: inputs that must exist do; every step's arguments parse (types, choices,
// contradictions) with the verb's own parser; the models that exist fit the device's memory.
// Throws a user error naming the step. Returns the memory lines for --dry-run; with `dry_run` a
// step that does not fit (or a missing CUDA device) is reported in its line instead of thrown.
std::vector<std::string> check_run(const RunPlan& plan, bool dry_run);

// The parent folder of a path relative to the recipe (absolute paths stay).
std::filesystem::path resolve_recipe_path(const recipe::Recipe& recipe, const std::string& value);

}  // namespace refinery::cli
