// ModelWeights layouts without their own fixture: transformers 5 fused expert tensors (built here
// from a per-expert fixture, so the reference logits still apply) and FP8 scale-grid errors.
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_writer.hpp"
#include "engine/model/model_weights.hpp"
#include "model_test_util.hpp"

namespace refinery::model {
namespace {

namespace fs = std::filesystem;

TEST(EngineWeightsLayout, FusedExpertTensorsGiveTheSameLogits) {
  const std::string name = "qwen3_moe_normtopk";
  const fs::path src = test::fixtures_dir() / name;
  const fs::path dir = fs::temp_directory_path() / ("engine_fused_" + std::to_string(getpid()));
  fs::create_directories(dir);
  fs::copy_file(src / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
  const io::Checkpoint ckpt = io::Checkpoint::open(src);
  const ModelConfig config = load_model_config(src);
  const int64_t e_count = config.moe->num_experts, inter = config.moe->expert_intermediate_size,
                hidden = config.hidden_size;

  std::vector<io::TensorToWrite> out;
  std::vector<std::vector<std::byte>> fused_storage;
  for (const auto& n : ckpt.names()) {
    if (n.find(".mlp.experts.") != std::string::npos) continue;  // re-written fused below
    const auto loc = ckpt.at(n);
    out.push_back({n, loc.entry->dtype, loc.entry->shape, ckpt.bytes(n), {}});
  }
  int fused_layers = 0;
  for (int l = 0; l < config.num_layers; ++l) {
    if (!config.layer_is_moe(l)) continue;
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.experts.";
    const std::size_t row = static_cast<std::size_t>(hidden) * 4,
                      proj = static_cast<std::size_t>(inter) * row;
    std::vector<std::byte> gate_up(static_cast<std::size_t>(e_count) * 2 * proj),
        down(static_cast<std::size_t>(e_count) * proj);
    for (int64_t e = 0; e < e_count; ++e) {
      const std::string q = p + std::to_string(e) + ".";
      ASSERT_EQ(ckpt.at(q + "gate_proj.weight").entry->dtype, DType::kF32);
      std::memcpy(gate_up.data() + e * 2 * proj, ckpt.bytes(q + "gate_proj.weight").data(), proj);
      std::memcpy(gate_up.data() + e * 2 * proj + proj, ckpt.bytes(q + "up_proj.weight").data(),
                  proj);
      std::memcpy(down.data() + e * proj, ckpt.bytes(q + "down_proj.weight").data(), proj);
    }
    fused_storage.push_back(std::move(gate_up));
    out.push_back(
        {p + "gate_up_proj", DType::kF32, {e_count, 2 * inter, hidden}, fused_storage.back(), {}});
    fused_storage.push_back(std::move(down));
    out.push_back(
        {p + "down_proj", DType::kF32, {e_count, hidden, inter}, fused_storage.back(), {}});
    ++fused_layers;
  }
  ASSERT_GT(fused_layers, 0);
  io::write_safetensors(dir / "model.safetensors", out);

  auto model = Transformer::load(dir, backend::make_cpu_backend());
  const test::Reference ref(name);
  const auto ids = ref.ids("input_ids_2");
  const auto want = ref.floats("logits_2");
  EXPECT_LE(test::max_abs_diff(test::values(model->forward(ids)), want),
            1e-4 * test::max_abs(want));
  fs::remove_all(dir);
}

TEST(EngineWeightsLayout, Fp8ScaleGridNotMatchingTheBlockSizeIsAUserError) {
  std::ifstream in(test::fixtures_dir() / "deepseek_v3_fp8" / "config.json");
  nlohmann::json cfg = nlohmann::json::parse(in);
  cfg["quantization_config"]["weight_block_size"] = {64, 64};
  const ModelConfig c = parse_model_config(cfg, "edited config.json");
  const io::Checkpoint ckpt = io::Checkpoint::open(test::fixtures_dir() / "deepseek_v3_fp8");
  try {
    ModelWeights::load(ckpt, c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    const std::string m = e.what();
    EXPECT_NE(m.find("weight_scale_inv"), std::string::npos) << m;
    EXPECT_NE(m.find("expected shape"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace refinery::model
