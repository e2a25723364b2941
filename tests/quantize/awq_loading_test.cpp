// Loading AWQ checkpoints into ModelWeights: shapes/dtypes validated with user errors that name
// the tensor; modules_to_not_convert keeps a module dense; GEMV packing is refused.
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "engine/io/checkpoint.hpp"
#include "engine/model/model_config.hpp"
#include "engine/model/model_weights.hpp"
#include "quantize/awq_pack.hpp"
#include "quantize/group_quant.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::quantize {
namespace {

const std::string kSource = REFINERY_SOURCE_DIR;
const std::string kPrefix = "model.layers.0.self_attn.q_proj";

class AwqLoading : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = scratch_.file("q");
    const auto r = test::run_refine("-q quantize " + kSource + "/tests/fixtures/models/llama_bf16 --out " +
                                    dir_ + " --bits 4 --group-size 32 --force");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    config_ = model::load_model_config(dir_);
    const io::Checkpoint ckpt = io::Checkpoint::open(dir_);
    for (const std::string& name : ckpt.names()) {
      const auto loc = ckpt.at(name);
      tensors_[name] = Tensor::copy_of(loc.entry->dtype, loc.entry->shape, ckpt.bytes(name).data());
    }
  }
  std::string load_error() {
    return test::error_message_of([&] { model::ModelWeights::from_tensors(tensors_, config_, "ckpt"); });
  }
  test::ScratchDir scratch_;
  std::string dir_;
  model::ModelConfig config_;
  std::map<std::string, Tensor> tensors_;
};

TEST_F(AwqLoading, LoadsAwqAndKeepsListedModulesDense) {
  const auto w = model::ModelWeights::from_tensors(tensors_, config_, "ckpt");
  const auto* q = std::get_if<backend::AwqWeight>(&w.layers[0].attention.q_proj.storage);
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->bits, 4);
  EXPECT_EQ(q->group_size, 32);
  EXPECT_EQ(w.layers[0].attention.q_proj.describe(), "awq-w4g32[64, 64]");
  // down_proj (in 88) stayed bf16 and is listed in modules_to_not_convert.
  EXPECT_NE(std::get_if<backend::DenseWeight>(&w.layers[0].mlp->down_proj.storage), nullptr);
}

TEST_F(AwqLoading, WrongShapeOrDtypeNamesTheTensor) {
  tensors_[kPrefix + ".qweight"] = Tensor::zeros(DType::kI32, {64, 4});
  std::string m = load_error();
  EXPECT_NE(m.find(kPrefix + ".qweight"), std::string::npos) << m;
  EXPECT_NE(m.find("[64, 8]"), std::string::npos) << m;
  SetUp();
  tensors_[kPrefix + ".scales"] = Tensor::zeros(DType::kF32, {2, 64});
  m = load_error();
  EXPECT_NE(m.find(kPrefix + ".scales"), std::string::npos) << m;
  EXPECT_NE(m.find("F16"), std::string::npos) << m;
  SetUp();
  tensors_.erase(kPrefix + ".qzeros");
  m = load_error();
  EXPECT_NE(m.find(kPrefix + ".qzeros"), std::string::npos) << m;
  EXPECT_NE(m.find("missing"), std::string::npos) << m;
}

TEST_F(AwqLoading, GemvPackingIsRefused) {
  config_.quant.version = model::AwqVersion::kGemv;
  const std::string m = load_error();
  EXPECT_NE(m.find("gemv"), std::string::npos) << m;
}

TEST_F(AwqLoading, BitsOtherThanTheFileAreCaught) {
  config_.quant.bits = 8;  // 8 bits: 4 codes per word, qweight would be [64, 16]
  const std::string m = load_error();
  EXPECT_NE(m.find(kPrefix + ".qweight"), std::string::npos) << m;
}

}  // namespace
}  // namespace refinery::quantize
