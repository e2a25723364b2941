// CI test of issue 3: for every fixture in tests/fixtures/models, our CPU logits match
// transformers' within max|Δ| <= 1e-4 x max|reference logit| for every stored sequence; the chosen
// experts and their weights equal reference.json's; every layer's output matches hidden_states_2.
#include <fstream>
#include <nlohmann/json.hpp>

#include "model_test_util.hpp"

namespace refinery::model {
namespace {

using test::max_abs;
using test::max_abs_diff;
using test::values;

class FixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureTest, LogitsMatchTransformers) {
  auto model = test::load_fixture(GetParam());
  const test::Reference ref(GetParam());
  int sequences = 0;
  for (int i = 0; ref.has("input_ids_" + std::to_string(i)); ++i, ++sequences) {
    const auto ids = ref.ids("input_ids_" + std::to_string(i));
    const auto expected = ref.floats("logits_" + std::to_string(i));
    const Tensor logits = model->forward(ids);
    ASSERT_EQ(logits.shape(),
              (std::vector<int64_t>{int64_t(ids.size()), model->config().vocab_size}));
    const double scale = max_abs(expected), err = max_abs_diff(values(logits), expected);
    EXPECT_LE(err, 1e-4 * scale) << GetParam() << " sequence " << i << ": max|Δ| " << err
                                 << " vs max|logit| " << scale;
  }
  EXPECT_GE(sequences, 3);
}

TEST_P(FixtureTest, LayerOutputsMatchHiddenStates) {
  auto model = test::load_fixture(GetParam());
  const test::Reference ref(GetParam());
  const auto ids = ref.ids("input_ids_2");
  const auto hs = ref.floats("hidden_states_2");  // [layers + 1, T, hidden]
  const int64_t t = int64_t(ids.size()), hidden = model->config().hidden_size,
                layers = model->config().num_layers;
  ASSERT_EQ(hs.size(), std::size_t((layers + 1) * t * hidden));
  test::Recorder rec;
  rec.filter = [](std::string_view n) { return n.ends_with(".output") || n == "layers.0.input"; };
  model->forward(ids, nullptr, &rec);
  for (int64_t l = 0; l <= layers; ++l) {
    const std::string name =
        l == 0 ? "layers.0.input" : "layers." + std::to_string(l - 1) + ".output";
    ASSERT_TRUE(rec.seen.count(name)) << name;
    const std::vector<float> want(hs.begin() + l * t * hidden, hs.begin() + (l + 1) * t * hidden);
    EXPECT_LE(max_abs_diff(values(rec.seen[name]), want), 1e-4 * max_abs(want))
        << GetParam() << " " << name;
  }
}

TEST_P(FixtureTest, ChosenExpertsMatchReference) {
  std::ifstream in(test::fixtures_dir() / GetParam() / "reference.json");
  const auto meta = nlohmann::json::parse(in);
  auto model = test::load_fixture(GetParam());
  if (!model->config().is_moe()) {
    EXPECT_FALSE(meta["sequences"][0].contains("routing"));
    return;
  }
  const std::string block =
      model->config().family == ModelFamily::kMixtral ? "block_sparse_moe" : "mlp";
  int checked_layers = 0;
  for (const auto& seq : meta["sequences"]) {
    const auto ids = seq["input_ids"].get<std::vector<int32_t>>();
    test::Recorder rec;
    rec.filter = [](std::string_view n) {
      return n.ends_with(".gate.experts") || n.ends_with(".gate.weights");
    };
    model->forward(ids, nullptr, &rec);
    for (const auto& [layer_key, routing] : seq["routing"].items()) {
      const int layer = std::stoi(layer_key.substr(6));  // "layer_N"
      const std::string p = "layers." + std::to_string(layer) + "." + block + ".gate.";
      ASSERT_TRUE(rec.seen.count(p + "experts")) << p;
      const Tensor& e = rec.seen[p + "experts"];
      const auto w = values(rec.seen[p + "weights"]);
      const int64_t k = e.size(1);
      const auto want_e = routing["experts"].get<std::vector<std::vector<int>>>();
      const auto want_w = routing["weights"].get<std::vector<std::vector<double>>>();
      ASSERT_EQ(int64_t(want_e.size()), e.size(0));
      for (int64_t t = 0; t < e.size(0); ++t) {
        std::vector<std::pair<int, double>> got;
        for (int64_t j = 0; j < k; ++j)
          got.emplace_back(e.data<int32_t>()[t * k + j], w[t * k + j]);
        std::sort(got.begin(), got.end());
        ASSERT_EQ(int64_t(want_e[t].size()), k);
        for (int64_t j = 0; j < k; ++j) {
          EXPECT_EQ(got[j].first, want_e[t][j]) << GetParam() << " " << layer_key << " token " << t;
          EXPECT_NEAR(got[j].second, want_w[t][j], 1e-4 * std::max(1.0, std::abs(want_w[t][j])))
              << GetParam() << " " << layer_key << " token " << t;
        }
      }
      ++checked_layers;
    }
  }
  EXPECT_GT(checked_layers, 0);
}

INSTANTIATE_TEST_SUITE_P(EngineFixtures, FixtureTest, ::testing::ValuesIn(test::fixture_names()),
                         [](const auto& info) { return info.param; });

TEST(EngineFixtures, AllTwelveFixturesArePresent) { EXPECT_EQ(test::fixture_names().size(), 12u); }

}  // namespace
}  // namespace refinery::model
