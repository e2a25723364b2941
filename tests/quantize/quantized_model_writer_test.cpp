// write_quantized_model through the library API (what the AWQ pass calls): replaced tensors,
// dropped weights, untouched tensors byte-identical, config and provenance, atomic replacement.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "engine/io/checkpoint.hpp"
#include "engine/model/model_config.hpp"
#include "engine/model/model_weights.hpp"
#include "quantize/awq_pack.hpp"
#include "quantize/quantized_model_writer.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::quantize {
namespace {

namespace fs = std::filesystem;
const fs::path kLlama = fs::path(REFINERY_SOURCE_DIR) / "tests/fixtures/models/llama_bf16";

TEST(QuantizedModelWriter, WritesPackedReplacedAndUntouchedTensors) {
  const auto config = model::load_model_config(kLlama);
  const io::Checkpoint src = io::Checkpoint::open(kLlama);
  const auto weights = model::ModelWeights::load(src, config);
  const std::string q = "model.layers.0.self_attn.q_proj", norm = "model.layers.0.input_layernorm.weight";
  const Tensor w = std::get<backend::DenseWeight>(weights.layers[0].attention.q_proj.storage).weight.to_f32();
  const GroupQuantSpec spec{4, 64, true};
  QuantizedModelParts parts;
  parts.quantized.emplace(q, pack_awq(quantize_groups(w.data<float>(), 64, 64, spec)));
  std::vector<float> twos(64, 2.0f);
  parts.replaced.emplace(norm, Tensor::copy_of(DType::kF32, {64}, twos.data()));
  parts.not_converted = {"model.layers.0.mlp.down_proj"};

  test::ScratchDir dir;
  const fs::path out = dir.file("out");
  fs::create_directories(out);
  std::ofstream(out / "stale.txt") << "old\n";  // an existing directory is replaced as a whole
  write_quantized_model(kLlama, out, parts, spec, {{"pass", "awq"}, {"metrics", {{"x", 1}}}});

  EXPECT_FALSE(fs::exists(out / "stale.txt"));
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename(), "out") << "left behind: " << e.path();
  const io::Checkpoint got = io::Checkpoint::open(out);
  EXPECT_FALSE(got.find(q + ".weight"));
  ASSERT_TRUE(got.find(q + ".qweight"));
  EXPECT_EQ(got.at(q + ".scales").entry->dtype, DType::kF16);
  float norm_values[64];
  std::memcpy(norm_values, got.bytes(norm).data(), sizeof(norm_values));
  EXPECT_EQ(std::vector<float>(norm_values, norm_values + 64), twos);
  for (const std::string& name : src.names()) {
    if (name == q + ".weight" || name == norm) continue;
    const auto a = src.bytes(name), b = got.bytes(name);
    ASSERT_EQ(a.size(), b.size()) << name;
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0) << name;
  }
  const auto cfg = nlohmann::json::parse(test::read_text_file((out / "config.json").string()));
  EXPECT_EQ(cfg["quantization_config"]["modules_to_not_convert"],
            nlohmann::json::array({"model.layers.0.mlp.down_proj"}));
  EXPECT_EQ(cfg["hidden_size"], 64);  // the rest of the source config is kept
  const auto prov = nlohmann::json::parse(test::read_text_file((out / "refinery.json").string()));
  EXPECT_EQ(prov["pass"], "awq");
  EXPECT_EQ(prov["metrics"]["x"], 1);
  EXPECT_EQ(prov["parent"], kLlama.string());
  EXPECT_EQ(prov["quantization"]["quantized_linears"], 1);
  // The engine runs the mixed file.
  const auto weights2 = model::ModelWeights::load(got, model::load_model_config(out));
  EXPECT_NE(std::get_if<backend::AwqWeight>(&weights2.layers[0].attention.q_proj.storage), nullptr);
}

TEST(QuantizedModelWriter, OutputDirectoryChecks) {
  test::ScratchDir dir;
  const fs::path busy = dir.file("busy");
  fs::create_directories(busy);
  std::ofstream(busy / "mine.txt") << "x\n";
  EXPECT_NE(test::error_message_of([&] { check_output_directory(kLlama, busy, false); }).find("--force"),
            std::string::npos);
  check_output_directory(kLlama, busy, true);
  check_output_directory(kLlama, dir.file("fresh"), false);
  EXPECT_NE(test::error_message_of([&] { check_output_directory(kLlama, kLlama / "sub", true); })
                .find("overlaps"),
            std::string::npos);
  EXPECT_NE(test::error_message_of([&] { check_output_directory(kLlama, kLlama.parent_path(), true); })
                .find("overlaps"),
            std::string::npos);
}

}  // namespace
}  // namespace refinery::quantize
