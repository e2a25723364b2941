// Fuzz target for the recipe parser: any bytes that are JSON must either parse into a Recipe or
// throw refinery::Error (a user error naming the key). Other exception types, crashes, sanitizer
// reports and hangs are bugs. The schema is a small fixed one (the CLI builds the real one from
// its parsers). Seeds: fuzz/corpus/recipe_fuzz/ (copies of recipes/*.json and broken variants).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "engine/core/error.hpp"
#include "recipe/recipe.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  static const refinery::recipe::Schemas schemas = [] {
    refinery::recipe::Schemas s;
    s["prune"] = {{"model", "calib", "experts", "add-special"}, {"add-special"}};
    s["distill"] = {{"student", "teacher", "data", "steps"}, {}};
    s["quantize"] = {{"model", "method", "bits", "calib"}, {}};
    return s;
  }();
  try {
    const auto recipe = refinery::recipe::parse_recipe(j, "fuzz/recipe.json", schemas);
    volatile size_t sink = recipe.steps.size();
    (void)sink;
  } catch (const refinery::Error&) {
    // Rejected recipe: the expected outcome for malformed data.
  }
  return 0;
}
