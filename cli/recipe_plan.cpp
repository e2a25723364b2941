// Planning and checking a recipe run (see recipe_plan.hpp).
#include "cli/recipe_plan.hpp"

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "cli/child_process.hpp"
#include "cli/commands.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/core/error.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/model/memory_estimate.hpp"
#include "engine/model/model_config.hpp"
#include "engine/model/parameter_count.hpp"

namespace refinery::cli {

namespace fs = std::filesystem;

namespace {

std::string folder_name(size_t index, const std::string& name) {
  char prefix[16];
  std::snprintf(prefix, sizeof prefix, "%02zu-", index + 1);
  return prefix + name;
}

std::string value_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  return v.dump();  // floats: JSON's shortest round-trip form
}

int64_t host_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

std::string gib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / double(int64_t{1} << 30));
  return buf;
}

int64_t option_int(const recipe::Step& step, const char* key, int64_t fallback) {
  const auto& o = step.options;
  return o.contains(key) && o[key].is_number_integer() ? o[key].get<int64_t>() : fallback;
}

bool has_weights(const fs::path& model) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(model, ec))
    if (entry.path().extension() == ".safetensors" ||
        entry.path().filename() == "model.safetensors.index.json")
      return true;
  return false;
}

// Inference memory of a model directory for `tokens` rows per forward. A directory with only a
// config.json (a recipe documented for a model that is not here) counts bf16 weights.
int64_t inference_bytes(const fs::path& model, int64_t tokens, int activation_bytes) {
  const auto config = model::load_model_config(model);
  const int64_t weights = has_weights(model)
                              ? model::checkpoint_weight_bytes(io::Checkpoint::open(model))
                              : 2 * model::count_parameters(config).total();
  model::RunShape run;
  run.tokens_per_forward = tokens;
  run.cache_positions = tokens;
  run.activation_bytes = activation_bytes;
  return model::estimate_memory(config, weights, run).total();
}

// Training memory of a student built from a config: bf16 (or f32) compute weights, f32 master
// weights and gradients, AdamW's two f32 moments (2/4 + 4 + 4 + 8 bytes per parameter), the layer
// inputs kept for recomputation [layers, tokens, hidden] f32, and one forward's transients.
int64_t training_bytes(const fs::path& config_path, int64_t tokens, int activation_bytes) {
  const auto config = model::load_model_config(config_path);
  const int64_t params = model::count_parameters(config).total();
  model::RunShape run;
  run.tokens_per_forward = tokens;
  run.cache_positions = tokens;
  run.activation_bytes = activation_bytes;
  const auto transient = model::estimate_memory(config, 0, run);
  return params * (activation_bytes + 16) +
         int64_t{config.num_layers} * tokens * config.hidden_size * 4 + transient.total();
}

// The resolved argument plan_run gave option `key` of a step (single-valued options only);
// empty when the step does not set it.
fs::path resolved_argument(const PlannedStep& p, const std::string& key) {
  if (!p.step->options.contains(key)) return {};
  if (key == "model") return p.args[1];  // the positional, right after the verb
  const auto it = std::find(p.args.begin(), p.args.end(), "--" + key);
  return it == p.args.end() || it + 1 == p.args.end() ? fs::path() : fs::path(*(it + 1));
}

}  // namespace

recipe::Schemas recipe_schemas() {
  CLI::App app;
  register_all_verbs(app);
  recipe::Schemas schemas;
  for (const auto& info : recipe::recipe_verbs()) {
    CLI::App* sub = app.get_subcommand(info.verb);
    recipe::VerbSchema schema;
    for (const CLI::Option* option : sub->get_options()) {
      if (option->get_positional()) {
        schema.options.insert("model");
        continue;
      }
      for (const auto& name : option->get_lnames()) {
        schema.options.insert(name);
        if (option->get_type_size() == 0) schema.flags.insert(name);
      }
    }
    schemas[info.verb] = std::move(schema);
  }
  return schemas;
}

fs::path resolve_recipe_path(const recipe::Recipe& recipe, const std::string& value) {
  const fs::path p = value;
  return p.is_absolute() ? p : fs::absolute(recipe.base_dir() / p).lexically_normal();
}

RunPlan plan_run(const recipe::Recipe& recipe, const fs::path& input_model,
                 const std::string& device, const fs::path& run_dir) {
  const auto schemas = recipe_schemas();
  RunPlan plan;
  plan.run_dir = fs::absolute(run_dir).lexically_normal();
  plan.input_model = fs::absolute(input_model).lexically_normal();
  plan.device = device;
  if (recipe.report.contains("data"))
    plan.report_data = resolve_recipe_path(recipe, recipe.report["data"].get<std::string>());
  std::map<std::string, fs::path> outputs{{"input", plan.input_model}};

  for (size_t i = 0; i < recipe.steps.size(); ++i) {
    const recipe::Step& step = recipe.steps[i];
    PlannedStep p;
    p.step = &step;
    p.output_kind = recipe::find_verb(step.verb)->output;
    p.folder = plan.run_dir / folder_name(i, step.name);
    p.output = p.folder / (p.output_kind == recipe::Output::kModel        ? "model"
                           : p.output_kind == recipe::Output::kLogitCache ? "cache.h5"
                                                                          : "eval.json");
    auto resolve = [&](const std::string& key, const nlohmann::json& v) -> std::string {
      if (const auto ref = recipe::reference_name(v)) return outputs.at(*ref).string();
      if (v.is_string() && recipe::is_input_path_option(key))
        return resolve_recipe_path(recipe, v.get<std::string>()).string();
      return value_text(v);
    };
    p.args.push_back(step.verb);
    if (step.options.contains("model")) p.args.push_back(resolve("model", step.options["model"]));
    for (const auto& [key, value] : step.options.items()) {
      if (key == "model") continue;
      if (value.is_boolean()) {
        if (value.get<bool>()) p.args.push_back("--" + key);
        continue;
      }
      for (const auto& v : value.is_array() ? value : nlohmann::json::array({value})) {
        p.args.push_back("--" + key);
        p.args.push_back(resolve(key, v));
      }
    }
    if (p.output_kind == recipe::Output::kEvalJson) {
      p.args.push_back("--json");
    } else {
      p.args.push_back("--out");
      p.args.push_back(p.output.string());
    }
    if (schemas.at(step.verb).options.count("device") && !step.options.contains("device")) {
      p.args.push_back("--device");
      p.args.push_back(device);
    }
    outputs[step.name] = p.output;
    plan.steps.push_back(std::move(p));
  }
  return plan;
}

std::vector<std::string> check_run(const RunPlan& plan, bool dry_run) {
  // 1. Inputs that exist before the run (references are made by earlier steps).
  for (const auto& p : plan.steps)
    for (const auto& [key, value] : p.step->options.items()) {
      if (!recipe::is_input_path_option(key) || value.is_array() || recipe::reference_name(value))
        continue;
      const fs::path resolved = resolved_argument(p, key);
      if (!resolved.empty() && !fs::exists(resolved))
        throw_user_error("step '", p.step->name, "': ", key, " ", resolved.string(),
                         " does not exist (relative paths in a recipe start at the recipe "
                         "file's folder); fix the path or create the input first");
    }

  // 2. Every step's arguments through the verb's own parser, with the work disabled.
  // The top app's parse-complete callback runs after every check of the parse and before the
  // verb's own callback: throwing there stops before any work. (Replacing the verbs' callbacks
  // instead would free the option storage their lambdas own, which the parse writes into.)
  struct ArgumentsChecked {};
  for (const auto& p : plan.steps) {
    CLI::App app;
    register_all_verbs(app);
    app.parse_complete_callback([] { throw ArgumentsChecked{}; });
    std::vector<std::string> args(p.args.rbegin(), p.args.rend());  // CLI11 parses a reversed vector
    try {
      app.parse(args);
      throw_internal_error("step '", p.step->name, "': the argument check did not stop the verb");
    } catch (const ArgumentsChecked&) {
      // parsed and valid
    } catch (const CLI::ParseError& e) {
      throw_user_error("step '", p.step->name, "': `", command_line(p.args), "` is not valid: ",
                       e.what(), "; see `refine ", p.step->verb, " --help`");
    }
  }

  // 3. Memory: the models that exist now, against the device.
  std::vector<std::string> lines;
  const bool cuda = plan.device == "cuda";
  const int act_bytes = cuda ? 2 : 4;
  int64_t available = 0;
  std::string device_name;
  if (cuda) {
    const auto devices = cuda::list_devices();
    if (devices.empty() && dry_run) {
      device_name = "GPU memory (no CUDA device here: " + cuda::no_device_reason() + ")";
    } else if (devices.empty()) {
      throw_user_error("the recipe runs on cuda but ", cuda::no_device_reason(),
                       "; use --device cpu (or \"device\": \"cpu\" in the recipe)");
    } else {
      available = static_cast<int64_t>(devices[0].free_memory_bytes);
      device_name = devices[0].name + " (free memory)";
    }
  } else {
    available = host_available_bytes();
    device_name = "host memory (available)";
  }
  for (const auto& p : plan.steps) {
    const auto& o = p.step->options;
    const int64_t seq = option_int(*p.step, "seq-len", 512);
    const int64_t tokens = seq * std::max<int64_t>(1, option_int(*p.step, "batch", 1));
    int64_t need = 0;
    std::string parts;
    for (const char* key : {"model", "teacher", "ref"}) {
      if (!o.contains(key)) continue;
      const auto ref = recipe::reference_name(o[key]);
      if (ref && *ref != "input") continue;  // made by an earlier step: checked when it loads
      const fs::path model = resolved_argument(p, key);
      if (!fs::exists(model / "config.json")) continue;
      const int64_t bytes = inference_bytes(model, tokens, act_bytes);
      need += bytes;
      parts += str(parts.empty() ? "" : " + ", key, " ", gib(bytes));
    }
    if (p.step->verb == "distill" && o.contains("student-config")) {
      const int64_t bytes =
          training_bytes(resolved_argument(p, "student-config"), tokens, act_bytes);
      need += bytes;
      parts += str(parts.empty() ? "" : " + ", "student training ", gib(bytes));
    }
    if (need == 0) {
      lines.push_back(str(p.step->name, ": memory checked when its inputs exist (made by earlier "
                                        "steps)"));
      continue;
    }
    const bool fits = available == 0 || need <= available;
    lines.push_back(str(p.step->name, ": needs about ", gib(need), " (", parts, ")",
                        available > 0 ? str(" of ", gib(available), " ") : std::string(" of "),
                        device_name, fits ? "" : ": DOES NOT FIT"));
    if (!fits && !dry_run)
      throw_user_error("step '", p.step->name, "' needs about ", gib(need), " (", parts, ") but ",
                       device_name, " has ", gib(available),
                       "; lower its seq-len or batch, use a smaller or quantized model, or a device "
                       "with more memory");
  }
  return lines;
}

}  // namespace refinery::cli
