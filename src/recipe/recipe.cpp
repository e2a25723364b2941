// Recipe parsing and the checks that need no option parser (see recipe.hpp).
#include "recipe/recipe.hpp"

#include <fstream>
#include <sstream>

#include "engine/core/error.hpp"
#include "recipe/did_you_mean.hpp"

namespace refinery::recipe {

namespace {

std::vector<std::string> keys_of(const std::set<std::string>& s) { return {s.begin(), s.end()}; }

void check_keys(const nlohmann::json& object, const std::vector<std::string>& allowed,
                const std::string& where) {
  for (const auto& [key, value] : object.items()) {
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    throw_user_error(where, ": unknown key '", key, "'", did_you_mean(key, allowed),
                     "; the keys are ", list);
  }
}

std::string required_string(const nlohmann::json& object, const std::string& key,
                            const std::string& where) {
  if (!object.contains(key))
    throw_user_error(where, ": missing \"", key, "\" (a string)");
  if (!object[key].is_string() || object[key].get<std::string>().empty())
    throw_user_error(where, ": \"", key, "\" must be a non-empty string, found ",
                     object[key].dump());
  return object[key].get<std::string>();
}

bool valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) return false;
  return true;
}

void check_option_value(const std::string& key, const nlohmann::json& value,
                        const std::string& where) {
  auto scalar = [](const nlohmann::json& v) { return v.is_string() || v.is_number(); };
  if (scalar(value) || value.is_boolean()) return;
  if (value.is_array() && !value.empty()) {
    for (const auto& v : value)
      if (!scalar(v))
        throw_user_error(where, ": option \"", key,
                         "\": the items of a list must be strings or numbers, found ", v.dump());
    return;
  }
  throw_user_error(where, ": option \"", key,
                   "\" must be a string, a number, true/false or a non-empty list, found ",
                   value.dump());
}

}  // namespace

const std::vector<VerbInfo>& recipe_verbs() {
  static const std::vector<VerbInfo> verbs = {{"prune", Output::kModel},
                                              {"distill", Output::kModel},
                                              {"quantize", Output::kModel},
                                              {"logits", Output::kLogitCache},
                                              {"eval", Output::kEvalJson}};
  return verbs;
}

const VerbInfo* find_verb(const std::string& verb) {
  for (const auto& v : recipe_verbs())
    if (verb == v.verb) return &v;
  return nullptr;
}

bool is_input_path_option(const std::string& key) {
  static const std::set<std::string> paths = {
      "model",   "calib",          "data",  "tokenizer", "student", "student-config", "teacher",
      "teacher-logits", "ref", "ref-logits", "plan", "scores", "tasks"};
  return paths.count(key) > 0;
}

bool is_runner_option(const std::string& key) {
  return key == "out" || key == "json" || key == "resume" || key == "force" || key == "report" ||
         key == "help";
}

std::optional<std::string> reference_name(const nlohmann::json& value) {
  if (!value.is_string()) return std::nullopt;
  const auto& s = value.get_ref<const std::string&>();
  if (s.size() < 2 || s[0] != '@') return std::nullopt;
  return s.substr(1);
}

Recipe parse_recipe(const nlohmann::json& j, const std::filesystem::path& file,
                    const Schemas& schemas) {
  const std::string where = str("recipe ", file.string());
  if (!j.is_object()) throw_user_error(where, ": expected a JSON object, found ", j.type_name());
  check_keys(j, {"name", "description", "model", "device", "steps", "report"}, where);
  Recipe r;
  r.file = file;
  r.name = required_string(j, "name", where);
  if (!valid_name(r.name))
    throw_user_error(where, ": \"name\" '", r.name,
                     "' may hold only letters, digits, - and _ (it names the run folder)");
  if (j.contains("description")) {
    if (!j["description"].is_string())
      throw_user_error(where, ": \"description\" must be a string");
    r.description = j["description"].get<std::string>();
  }
  r.model = required_string(j, "model", where);
  if (j.contains("device")) {
    r.device = required_string(j, "device", where);
    if (r.device != "auto" && r.device != "cpu" && r.device != "cuda")
      throw_user_error(where, ": \"device\" must be auto, cpu or cuda, found '", r.device, "'");
  }
  if (j.contains("report")) {
    if (!j["report"].is_object()) throw_user_error(where, ": \"report\" must be an object");
    r.report = j["report"];
    check_keys(r.report,
               {"data", "seq-len", "stride", "add-special", "tokenizer", "max-tokens",
                "prefill-tokens", "decode-tokens"},
               where + ": report");
    if (!r.report.contains("data"))
      throw_user_error(where, ": report: missing \"data\" (held-out text or tokens to evaluate "
                              "every artifact on)");
  }
  if (!j.contains("steps") || !j["steps"].is_array() || j["steps"].empty())
    throw_user_error(where, ": \"steps\" must be a non-empty list of steps");

  // Names of earlier steps and what they produce, for references.
  std::map<std::string, Output> produced;
  std::vector<std::string> verb_names;
  for (const auto& v : recipe_verbs()) verb_names.push_back(v.verb);
  for (size_t i = 0; i < j["steps"].size(); ++i) {
    const auto& s = j["steps"][i];
    std::string at = str(where, ": step ", i + 1);
    if (!s.is_object()) throw_user_error(at, ": expected an object {name, verb, options}");
    check_keys(s, {"name", "verb", "options"}, at);
    Step step;
    step.name = required_string(s, "name", at);
    at = str(where, ": step '", step.name, "'");
    if (!valid_name(step.name) || step.name == "input")
      throw_user_error(at, ": a step name holds only letters, digits, - and _ and is not 'input'");
    if (produced.count(step.name)) throw_user_error(at, ": two steps have this name");
    step.verb = required_string(s, "verb", at);
    const VerbInfo* verb = find_verb(step.verb);
    if (!verb)
      throw_user_error(at, ": unknown verb '", step.verb, "'", did_you_mean(step.verb, verb_names),
                       "; a recipe step is one of prune, distill, quantize, logits, eval");
    step.options = s.contains("options") ? s["options"] : nlohmann::json::object();
    if (!step.options.is_object()) throw_user_error(at, ": \"options\" must be an object");

    const auto schema = schemas.find(step.verb);
    for (const auto& [key, value] : step.options.items()) {
      if (is_runner_option(key))
        throw_user_error(at, ": option \"", key,
                         "\" is set by the recipe runner (each step writes into its own folder of "
                         "the run directory); remove it");
      if (schema != schemas.end() && !schema->second.options.count(key))
        throw_user_error(at, ": `refine ", step.verb, "` has no option \"", key, "\"",
                         did_you_mean(key, keys_of(schema->second.options)),
                         "; see `refine ", step.verb, " --help`");
      check_option_value(key, value, at);
      if (schema != schemas.end() && schema->second.flags.count(key) && !value.is_boolean())
        throw_user_error(at, ": option \"", key, "\" is a flag: write true or false, found ",
                         value.dump());
      std::vector<nlohmann::json> values =
          value.is_array() ? std::vector<nlohmann::json>(value.begin(), value.end())
                           : std::vector<nlohmann::json>{value};
      for (const auto& v : values) {
        const auto ref = reference_name(v);
        if (!ref || *ref == "input") continue;
        const auto it = produced.find(*ref);
        if (it == produced.end()) {
          std::vector<std::string> earlier{"input"};
          for (const auto& [name, out] : produced) earlier.push_back(name);
          throw_user_error(at, ": option \"", key, "\" refers to '@", *ref,
                           "', which is not an earlier step", did_you_mean(*ref, earlier),
                           "; a reference names a step above this one, or @input");
        }
        if (it->second == Output::kEvalJson)
          throw_user_error(at, ": option \"", key, "\" refers to '@", *ref,
                           "', an eval step, which produces no model or cache");
      }
    }
    // Contradictions the verbs find only when they run (their parsers check the others).
    for (const auto& [a, b] : {std::pair{"student", "student-config"}, {"teacher", "teacher-logits"},
                               {"ref", "ref-logits"}, {"scores", "calib"}, {"plan", "experts"}})
      if (step.options.contains(a) && step.options.contains(b))
        throw_user_error(at, ": options \"", a, "\" and \"", b,
                         "\" exclude each other; keep one (see `refine ", step.verb, " --help`)");
    if (step.verb == "quantize" && step.options.value("method", "") == "awq" &&
        !step.options.contains("calib"))
      throw_user_error(at, ": method awq needs calibration data: add \"calib\" (text or tokens)");
    produced[step.name] = verb->output;
    r.steps.push_back(std::move(step));
  }
  return r;
}

Recipe read_recipe(const std::filesystem::path& file, const Schemas& schemas) {
  if (std::filesystem::is_directory(file))
    throw_user_error(file.string(), " is a directory; give the path of a recipe JSON file, e.g. "
                                    "recipes/quickstart.json");
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw_user_error("cannot read recipe ", file.string(),
                     ": no such file or not readable; give the path of a recipe JSON, e.g. "
                     "recipes/quickstart.json");
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::parse_error& e) {
    throw_user_error("recipe ", file.string(), " is not valid JSON (", e.what(),
                     "); fix the file, e.g. a missing comma or quote");
  }
  return parse_recipe(j, file, schemas);
}

}  // namespace refinery::recipe
