// `refine recipe FILE.json [--run-dir DIR] [--resume] [--dry-run] [--model PATH] [--device D]`:
// validates a recipe (src/recipe/recipe.hpp), then runs its steps in order, each as the `refine`
// command a user could type, in its own folder of the run directory, and ends with the report
// (src/recipe/report.hpp) on stdout and as report.{md,json,html} in the run directory.
//
// Run directory:
//   run.json            the recipe and every step's arguments (a --resume checks they match)
//   NN-name/            one per step: the output (model/, cache.h5 or eval.json), stdout.txt, and
//                       step.json once the step finished (a --resume skips it then)
//   NN-name/report-*.json, 00-input/report-*.json   the report's measurements, kept for --resume
//   report.md, report.json, report.html
#include <chrono>
#include <ctime>
#include <iostream>
#include <set>

#include "cli/child_process.hpp"
#include "cli/commands.hpp"
#include "cli/recipe_plan.hpp"
#include "engine/backend/cuda/device_info.hpp"
#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/io/atomic_file.hpp"
#include "engine/io/model_directory.hpp"
#include "recipe/recipe.hpp"
#include "recipe/report.hpp"

namespace refinery::cli {

namespace fs = std::filesystem;

namespace {

struct Options {
  std::string file, run_dir, model, device;
  bool resume = false, dry_run = false, json = false;
};

nlohmann::json plan_json(const recipe::Recipe& recipe, const RunPlan& plan) {
  nlohmann::json j{{"recipe", recipe.name},
                   {"recipe_file", fs::absolute(recipe.file).string()},
                   {"input_model", plan.input_model.string()},
                   {"device", plan.device},
                   {"steps", nlohmann::json::array()}};
  for (const auto& p : plan.steps) j["steps"].push_back({{"name", p.step->name}, {"args", p.args}});
  return j;
}

// Creates the run directory, or on --resume checks that it holds this very run.
void open_run_directory(const recipe::Recipe& recipe, const RunPlan& plan, bool resume) {
  const fs::path run_file = plan.run_dir / "run.json";
  const nlohmann::json current = plan_json(recipe, plan);
  if (!fs::exists(run_file)) {
    if (fs::exists(plan.run_dir) && !fs::is_empty(plan.run_dir))
      throw_user_error("run directory ", plan.run_dir.string(),
                       " exists and is not a recipe run; choose another --run-dir");
    fs::create_directories(plan.run_dir);
    io::write_file_atomically(run_file, current.dump(2) + "\n");
    return;
  }
  if (!resume)
    throw_user_error("run directory ", plan.run_dir.string(),
                     " already holds a run (run.json); pass --resume to continue it, or "
                     "--run-dir to start a new one");
  const nlohmann::json previous = io::read_json_file(run_file);
  // Finished steps must not change under a resume; later steps may be edited or added.
  const auto& old_steps = previous.value("steps", nlohmann::json::array());
  for (size_t i = 0; i < plan.steps.size() && i < old_steps.size(); ++i) {
    const auto& p = plan.steps[i];
    if (!fs::exists(p.folder / "step.json")) break;
    if (old_steps[i].value("args", nlohmann::json()) != nlohmann::json(p.args))
      throw_user_error("step '", p.step->name, "' finished in ", plan.run_dir.string(),
                       " with other options (", p.folder.string(),
                       "/step.json); a resumed run cannot change a finished step: undo the change "
                       "or start a new run with --run-dir");
  }
  io::write_file_atomically(run_file, current.dump(2) + "\n");
}

// Prepares an interrupted step's folder: distill continues from its checkpoint; anything else
// starts over (its output was never finished, so nothing a user has is lost).
std::vector<std::string> args_for_attempt(const PlannedStep& p) {
  std::vector<std::string> args = p.args;
  if (!fs::exists(p.folder)) {
    fs::create_directories(p.folder);
    return args;
  }
  // The report's measurements of an earlier attempt describe an output about to change.
  for (const auto& entry : fs::directory_iterator(p.folder))
    if (entry.path().filename().string().rfind("report-", 0) == 0) fs::remove(entry.path());
  if (p.step->verb == "distill" && fs::exists(p.output / "train" / "checkpoint")) {
    log::info("step '", p.step->name, "' was interrupted: resuming its training checkpoint");
    args.push_back("--resume");
    return args;
  }
  if (p.step->verb == "logits") return args;  // the cache resumes at its last complete chunk
  fs::remove_all(p.output);
  return args;
}

double run_step(const PlannedStep& p, size_t index, size_t count) {
  std::cerr << "\n[" << index + 1 << "/" << count << "] " << p.step->verb << " '" << p.step->name
            << "' -> " << p.output.string() << "\n";
  const auto args = args_for_attempt(p);
  std::cerr << "  $ " << command_line(args) << "\n";
  const auto t0 = std::chrono::steady_clock::now();
  const fs::path stdout_file = p.output_kind == recipe::Output::kEvalJson
                                   ? p.folder / "eval.json.partial"
                                   : p.folder / "stdout.txt";
  const bool is_eval = p.output_kind == recipe::Output::kEvalJson;
  const int code = run_refine_child(args, stdout_file, /*echo_stdout=*/!is_eval);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (code != 0)
    throw_user_error("step '", p.step->name, "' failed (exit code ", code, "): `",
                     command_line(args), "`; its error is above and its files are in ",
                     p.folder.string(), ". Fix the cause, then rerun with --resume");
  if (is_eval) {
    fs::rename(stdout_file, p.output);
    const auto j = io::read_json_file(p.output);
    std::cerr << "  perplexity " << j.value("perplexity", 0.0);
    if (j.contains("kl_mean"))
      std::cerr << ", KL to the reference " << j["kl_mean"].get<double>() << ", top-1 agreement "
                << 100 * j.value("top1_agreement", 0.0) << "%";
    std::cerr << " (" << p.output.string() << ")\n";
  }
  io::write_file_atomically(p.folder / "step.json",
                            nlohmann::json({{"name", p.step->name},
                                            {"verb", p.step->verb},
                                            {"command", command_line(args)},
                                            {"output", p.output.string()},
                                            {"seconds", seconds}})
                                    .dump(2) +
                                "\n");
  std::cerr << "  done in " << seconds << " s\n";
  return seconds;
}

// Runs `refine args... --json` once and keeps its JSON in `file` (reused on --resume).
nlohmann::json measured_json(const std::vector<std::string>& args, const fs::path& file) {
  if (fs::exists(file)) return io::read_json_file(file);
  std::cerr << "  $ " << command_line(args) << "\n";
  const fs::path partial = file.string() + ".partial";
  const int code = run_refine_child(args, partial, /*echo_stdout=*/false);
  if (code != 0)
    throw_user_error("the report's measurement `", command_line(args), "` failed (exit code ",
                     code, "); its error is above. Fix the cause, then rerun with --resume");
  fs::rename(partial, file);
  return io::read_json_file(file);
}

recipe::ArtifactRow measure_artifact(const recipe::Recipe& recipe, const RunPlan& plan,
                                     const std::string& name, const std::string& verb,
                                     const fs::path& model, const fs::path& folder) {
  recipe::ArtifactRow row;
  row.name = name;
  row.verb = verb;
  row.path = model.string();
  row.bytes_on_disk = recipe::model_bytes_on_disk(model);
  fs::create_directories(folder);
  const auto inspect =
      measured_json({"inspect", model.string(), "--json"}, folder / "report-inspect.json");
  row.model_type = inspect.value("model_type", "");
  row.params_total = inspect.value("params_total", int64_t{0});
  row.params_active = inspect.value("params_active", int64_t{0});

  const auto& r = recipe.report;
  if (!plan.report_data.empty()) {
    std::vector<std::string> args{"eval", model.string(), "--data", plan.report_data.string(),
                                  "--json", "--device", plan.device};
    if (model != plan.input_model) args.insert(args.end(), {"--ref", plan.input_model.string()});
    for (const char* key : {"seq-len", "stride"})
      if (r.contains(key)) args.insert(args.end(), {std::string("--") + key, r[key].dump()});
    if (r.contains("tokenizer"))
      args.insert(args.end(), {"--tokenizer", resolve_recipe_path(recipe, r["tokenizer"]).string()});
    if (r.value("add-special", false)) args.push_back("--add-special");
    const auto eval = measured_json(args, folder / "report-eval.json");
    row.perplexity = eval.value("perplexity", 0.0);
    if (model == plan.input_model) {
      row.kl_mean = 0.0, row.top1_agreement = 1.0;  // the teacher against itself
    } else {
      if (eval.contains("kl_mean")) row.kl_mean = eval["kl_mean"].get<double>();
      if (eval.contains("top1_agreement"))
        row.top1_agreement = eval["top1_agreement"].get<double>();
    }
  }
  const auto bench = measured_json(
      {"bench", model.string(), "--prefill-tokens",
       std::to_string(r.value("prefill-tokens", int64_t{256})), "--decode-tokens",
       std::to_string(r.value("decode-tokens", int64_t{32})), "--device", plan.device, "--json"},
      folder / "report-bench.json");
  row.prefill_tokens_per_s = bench.value("prefill_tokens_per_s", 0.0);
  row.decode_tokens_per_s = bench.value("decode_tokens_per_s", 0.0);
  return row;
}

std::string now_text() {
  const std::time_t t = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  return buf;
}

void run_recipe(const Options& o) {
  const auto recipe = recipe::read_recipe(o.file, recipe_schemas());
  std::string device = o.device.empty() ? recipe.device : o.device;
  if (device != "auto" && device != "cpu" && device != "cuda")
    throw_user_error("--device ", device, ": expected auto, cpu or cuda");
  if (device == "auto") device = cuda::list_devices().empty() ? "cpu" : "cuda";
  const fs::path input =
      o.model.empty() ? resolve_recipe_path(recipe, recipe.model) : fs::path(o.model);
  if (!fs::exists(input / "config.json"))
    throw_user_error("the recipe's model ", input.string(),
                     " is not a model directory (no config.json); fix \"model\" in ",
                     o.file, " or pass --model PATH");
  const fs::path run_dir = o.run_dir.empty() ? fs::path("runs") / recipe.name : fs::path(o.run_dir);
  const RunPlan plan = plan_run(recipe, input, device, run_dir);
  const auto memory = check_run(plan, o.dry_run);

  if (o.dry_run) {
    std::cout << "recipe " << recipe.name << ": valid; " << plan.steps.size()
              << " steps on " << device << " into " << plan.run_dir.string() << "\n";
    for (size_t i = 0; i < plan.steps.size(); ++i)
      std::cout << "  " << i + 1 << ". " << command_line(plan.steps[i].args) << "\n";
    std::cout << "memory:\n";
    for (const auto& line : memory) std::cout << "  " << line << "\n";
    return;
  }
  if (!plan.report_data.empty() && !fs::exists(plan.report_data))
    throw_user_error("recipe ", o.file, ": report data ", plan.report_data.string(),
                     " does not exist; fix \"report\": {\"data\": ...}");

  open_run_directory(recipe, plan, o.resume);
  std::cerr << "recipe " << recipe.name << ": " << plan.steps.size() << " steps on " << device
            << ", run directory " << plan.run_dir.string() << "\n";
  recipe::Report report;
  report.recipe = recipe.name;
  report.description = recipe.description;
  report.run_dir = plan.run_dir.string();
  report.device = device;
  report.created = now_text();
  std::set<std::string> ran;  // steps run by this invocation: what reads their outputs is stale
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    const auto& p = plan.steps[i];
    recipe::StepRecord record{p.step->name, p.step->verb, p.output.string(), 0.0, false};
    for (const auto& [key, value] : p.step->options.items()) {
      const auto ref = recipe::reference_name(value);
      if (ref && ran.count(*ref) && fs::exists(p.folder / "step.json")) {
        std::cerr << "\nstep '" << p.step->name << "' reads '@" << *ref
                  << "', which ran again: it runs again too\n";
        fs::remove(p.folder / "step.json");
      }
    }
    if (fs::exists(p.folder / "step.json")) {
      record.reused = true;
      record.seconds = io::read_json_file(p.folder / "step.json").value("seconds", 0.0);
      std::cerr << "\n[" << i + 1 << "/" << plan.steps.size() << "] " << p.step->verb << " '"
                << p.step->name << "': finished in an earlier run, kept (" << p.output.string()
                << ")\n";
    } else {
      record.seconds = run_step(p, i, plan.steps.size());
      ran.insert(p.step->name);
    }
    report.steps.push_back(record);
  }

  std::cerr << "\nreport: measuring every artifact against the teacher\n";
  report.eval_data = plan.report_data.string();
  report.artifacts.push_back(
      measure_artifact(recipe, plan, "teacher", "input", plan.input_model, plan.run_dir / "00-input"));
  for (const auto& p : plan.steps) {
    if (p.output_kind != recipe::Output::kModel) continue;
    report.artifacts.push_back(
        measure_artifact(recipe, plan, p.step->name, p.step->verb, p.output, p.folder));
    if (p.step->verb == "distill")
      for (auto& chart : recipe::distill_charts(p.step->name, p.output / "train" / "metrics.jsonl"))
        report.charts.push_back(std::move(chart));
  }
  const std::string markdown = recipe::render_markdown(report);
  const nlohmann::json json = recipe::report_to_json(report);
  io::write_file_atomically(plan.run_dir / "report.md", markdown);
  io::write_file_atomically(plan.run_dir / "report.json", json.dump(2) + "\n");
  io::write_file_atomically(plan.run_dir / "report.html", recipe::render_html(report));
  if (o.json)
    std::cout << json.dump() << "\n";
  else
    std::cout << markdown << "\nreport also in " << (plan.run_dir / "report.html").string()
              << " (with curves) and report.json\n";
}

}  // namespace

void register_recipe(CLI::App& app) {
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("recipe", "Run a JSON pipeline of steps and report on every artifact");
  cmd->footer(
      "A recipe chains prune, distill, logits, quantize and eval steps whose options are the\n"
      "verbs' own (recipes/*.json; the format is in docs/RECIPES.md). Everything is checked\n"
      "before the first step runs. Each step writes into its own folder of the run directory\n"
      "(default runs/<name>); --resume skips finished steps and continues an interrupted one. The\n"
      "report compares every model with the teacher: Markdown on stdout, report.{md,json,html}.\n\n"
      "Example:\n"
      "  refine recipe recipes/quickstart.json\n"
      "  refine recipe recipes/awq-w4g128.json --model my-model/ --run-dir runs/my-awq --resume\n"
      "  refine recipe recipes/moe-to-dense-7b.json --dry-run");
  cmd->add_option("FILE", o->file, "The recipe (JSON)")->required();
  cmd->add_option("--run-dir", o->run_dir, "Run directory (default runs/<recipe name>)");
  cmd->add_option("--model", o->model, "Use this input model instead of the recipe's \"model\"");
  cmd->add_option("--device", o->device, "auto, cpu or cuda (default: the recipe's, else auto)");
  cmd->add_flag("--resume", o->resume, "Continue the run in the run directory");
  cmd->add_flag("--dry-run", o->dry_run,
                "Check the recipe and print the commands and memory estimates; run nothing");
  cmd->add_flag("--json", o->json, "Print the report as one JSON object instead of Markdown");
  cmd->callback([o] { run_recipe(*o); });
}

}  // namespace refinery::cli
