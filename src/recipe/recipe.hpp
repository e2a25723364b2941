#pragma once
// Recipes: JSON pipelines of `refine` steps (DESIGN §2, `refine recipe FILE.json [--resume]`).
//
//   {
//     "name": "quickstart",                         letters, digits, - and _
//     "description": "what it makes",               optional
//     "model": "../models/refinery-teacher-moe",    the input model (the teacher), "@input" below
//     "device": "cpu" | "cuda" | "auto",             optional, default "auto": cuda when present;
//                                                   given as --device to every step that has it
//     "steps": [                                    run in order
//       {"name": "pruned", "verb": "prune",
//        "options": {"model": "@input", "calib": "../data/sample/train-1m.jsonl", "experts": 8}},
//       ...
//     ],
//     "report": {"data": "...", "seq-len": 256, ...} the held-out evaluation of every artifact
//   }
//
// A step's options are exactly the long options of `refine <verb>` without the dashes; the
// positional MODEL is "model". Values: a string, a number, true (a flag; false leaves it out) or
// an array (the option repeated). A string "@NAME" is the output of the earlier step NAME (its
// model directory or logit cache), "@input" the recipe's model. Relative paths are relative to
// the recipe file's folder. The runner gives every step its output (--out) and never lets a
// recipe set it. What `refine` can check only with its option parser (did-you-mean over a verb's
// options, contradictions, value checks) is done by cli/cmd_recipe.cpp through the VerbSchema
// that it builds from the parser; this file checks everything else.

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace refinery::recipe {

// The verbs a recipe may use and what each one produces.
enum class Output { kModel, kLogitCache, kEvalJson };
struct VerbInfo {
  const char* verb;
  Output output;
};
// prune, distill, quantize (models), logits (a cache), eval (a JSON result).
const std::vector<VerbInfo>& recipe_verbs();
const VerbInfo* find_verb(const std::string& verb);

// What the option parser of one verb accepts (built by the CLI from CLI11).
struct VerbSchema {
  std::set<std::string> options;  // long names without dashes, plus "model" for the positional
  std::set<std::string> flags;    // options that take no value
};
using Schemas = std::map<std::string, VerbSchema>;

struct Step {
  std::string name;
  std::string verb;
  nlohmann::json options;  // object, as written (references unresolved)
};

struct Recipe {
  std::filesystem::path file;  // where it was read from (relative paths start at its folder)
  std::string name, description;
  std::string model;           // as written
  std::string device = "auto";
  std::vector<Step> steps;
  nlohmann::json report = nlohmann::json::object();  // eval options of the report

  std::filesystem::path base_dir() const { return file.parent_path(); }
};

// Parses and checks the structure: keys (unknown ones get a did-you-mean), types, step names
// (unique, not "input"), verbs, references to earlier steps that produce a usable output, options
// that the runner sets itself. `schemas` adds the per-verb option check. User errors name the file,
// the step and the key.
Recipe parse_recipe(const nlohmann::json& j, const std::filesystem::path& file,
                    const Schemas& schemas);
Recipe read_recipe(const std::filesystem::path& file, const Schemas& schemas);

// Options whose value is a path to something that must exist before the step runs.
bool is_input_path_option(const std::string& key);
// Options a recipe may not set: the runner owns them (out, json, resume, force, report).
bool is_runner_option(const std::string& key);

// "@name" -> "name"; nullopt for anything else.
std::optional<std::string> reference_name(const nlohmann::json& value);

}  // namespace refinery::recipe
