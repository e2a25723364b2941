// Recipe parsing (src/recipe/recipe.hpp): structure, did-you-mean, references, and the checks that
// need no option parser. The option-level checks with the real parsers are in
// tests/cli/recipe_cli_test.cpp.
#include <gtest/gtest.h>

#include "engine/core/error.hpp"
#include "recipe/did_you_mean.hpp"
#include "recipe/recipe.hpp"

namespace refinery::recipe {
namespace {

using nlohmann::json;

// A schema like the CLI's, small enough to write by hand.
Schemas schemas() {
  Schemas s;
  s["prune"] = {{"model", "calib", "scores", "experts", "add-special", "seq-len"}, {"add-special"}};
  s["distill"] = {{"student", "teacher", "data", "steps"}, {}};
  s["quantize"] = {{"model", "method", "bits", "group-size", "calib"}, {}};
  s["logits"] = {{"model", "data", "top-k"}, {}};
  s["eval"] = {{"model", "ref", "data"}, {}};
  return s;
}

json minimal() {
  return json::parse(R"({"name": "r", "model": "m", "steps": [
      {"name": "p", "verb": "prune", "options": {"model": "@input", "calib": "c.jsonl", "experts": 4}},
      {"name": "q", "verb": "quantize", "options": {"model": "@p", "method": "rtn", "bits": 4}}]})");
}

std::string error_of(const json& j) {
  try {
    parse_recipe(j, "dir/r.json", schemas());
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    return e.what();
  }
  return "";
}

TEST(DidYouMean, PicksTheClosestPlausibleCandidate) {
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3);
  EXPECT_EQ(edit_distance("", "abc"), 3);
  EXPECT_EQ(did_you_mean("expert", {"experts", "layers", "seed"}), " (did you mean 'experts'?)");
  EXPECT_EQ(did_you_mean("group_size", {"group-size", "bits"}), " (did you mean 'group-size'?)");
  EXPECT_EQ(did_you_mean("zzzzzzzz", {"experts", "layers"}), "");
  EXPECT_EQ(did_you_mean("x", {}), "");
}

TEST(RecipeParse, MinimalRecipe) {
  const Recipe r = parse_recipe(minimal(), "dir/r.json", schemas());
  EXPECT_EQ(r.name, "r");
  EXPECT_EQ(r.device, "auto");
  ASSERT_EQ(r.steps.size(), 2u);
  EXPECT_EQ(r.steps[1].verb, "quantize");
  EXPECT_EQ(r.base_dir(), "dir");
  EXPECT_EQ(reference_name(r.steps[1].options["model"]).value(), "p");
  EXPECT_FALSE(reference_name(json("@")).has_value());
  EXPECT_FALSE(reference_name(json(3)).has_value());
}

TEST(RecipeParse, UnknownKeysGetDidYouMean) {
  json j = minimal();
  j["modle"] = "m";
  EXPECT_NE(error_of(j).find("unknown key 'modle' (did you mean 'model'?)"), std::string::npos);
  j = minimal();
  j["steps"][0]["option"] = json::object();
  EXPECT_NE(error_of(j).find("did you mean 'options'?"), std::string::npos);
  j = minimal();
  j["steps"][0]["options"]["expert"] = 4;
  const auto e = error_of(j);
  EXPECT_NE(e.find("step 'p'"), std::string::npos) << e;
  EXPECT_NE(e.find("has no option \"expert\" (did you mean 'experts'?)"), std::string::npos) << e;
  j = minimal();
  j["steps"][1]["verb"] = "quantise";
  EXPECT_NE(error_of(j).find("unknown verb 'quantise' (did you mean 'quantize'?)"),
            std::string::npos);
  j = minimal();
  j["report"] = {{"data", "v.jsonl"}, {"seq_len", 4}};
  EXPECT_NE(error_of(j).find("did you mean 'seq-len'?"), std::string::npos);
}

TEST(RecipeParse, ReferencesMustNameEarlierStepsWithAnOutput) {
  json j = minimal();
  j["steps"][0]["options"]["model"] = "@q";  // a later step
  EXPECT_NE(error_of(j).find("refers to '@q', which is not an earlier step"), std::string::npos);
  j = minimal();
  j["steps"][1]["options"]["model"] = "@pp";
  EXPECT_NE(error_of(j).find("(did you mean 'p'?)"), std::string::npos);
  j = minimal();
  j["steps"].push_back({{"name", "e"}, {"verb", "eval"}, {"options", {{"model", "@q"}}}});
  j["steps"].push_back({{"name", "x"}, {"verb", "eval"}, {"options", {{"model", "@e"}}}});
  EXPECT_NE(error_of(j).find("an eval step, which produces no model"), std::string::npos);
}

TEST(RecipeParse, RejectsBadStructure) {
  EXPECT_NE(error_of(json::array()).find("expected a JSON object"), std::string::npos);
  json j = minimal();
  j.erase("steps");
  EXPECT_NE(error_of(j).find("\"steps\" must be a non-empty list"), std::string::npos);
  j = minimal();
  j["steps"][1]["name"] = "p";
  EXPECT_NE(error_of(j).find("two steps have this name"), std::string::npos);
  j = minimal();
  j["steps"][1]["name"] = "input";
  EXPECT_NE(error_of(j).find("not 'input'"), std::string::npos);
  j = minimal();
  j["name"] = "has space";
  EXPECT_NE(error_of(j).find("may hold only letters"), std::string::npos);
  j = minimal();
  j["device"] = "tpu";
  EXPECT_NE(error_of(j).find("auto, cpu or cuda"), std::string::npos);
  j = minimal();
  j["steps"][0]["options"]["out"] = "x";
  EXPECT_NE(error_of(j).find("set by the recipe runner"), std::string::npos);
  j = minimal();
  j["steps"][0]["options"]["experts"] = json::object();
  EXPECT_NE(error_of(j).find("must be a string, a number"), std::string::npos);
  j = minimal();
  j["steps"][0]["options"]["add-special"] = 1;
  EXPECT_NE(error_of(j).find("is a flag: write true or false"), std::string::npos);
  j = minimal();
  j["steps"][1]["options"]["method"] = "awq";
  EXPECT_NE(error_of(j).find("method awq needs calibration data"), std::string::npos);
  j = minimal();
  j["steps"][0]["options"]["scores"] = "s.json";
  EXPECT_NE(error_of(j).find("\"scores\" and \"calib\" exclude each other"), std::string::npos);
  j = minimal();
  j["report"] = {{"seq-len", 4}};
  EXPECT_NE(error_of(j).find("report: missing \"data\""), std::string::npos);
}

TEST(RecipeParse, ReadRecipeNamesTheFileOnBadJson) {
  try {
    read_recipe(std::string(REFINERY_SOURCE_DIR) + "/no/such/recipe.json", schemas());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot read recipe"), std::string::npos);
  }
  // Every shipped recipe parses without a schema (the CLI test checks them with the parsers).
  for (const char* name : {"quickstart", "awq-w4g128", "minitron-prune-distill", "moe-to-dense-7b"})
    EXPECT_NO_THROW(read_recipe(std::string(REFINERY_SOURCE_DIR) + "/recipes/" + name + ".json", {}))
        << name;
}

}  // namespace
}  // namespace refinery::recipe
