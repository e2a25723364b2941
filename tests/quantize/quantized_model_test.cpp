// `refine quantize --method rtn` end to end: the files it writes, read by an independent numpy
// reader (tests/fixtures/quantize/read_awq_model.py, outputs frozen in *_numpy.safetensors), must
// dequantize to exactly what the engine dequantizes; the CPU linear must multiply with those
// weights; and the engine's logits on the quantized model must equal those of the dense model
// whose weights are replaced by their dequantized values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/backend/awq_dequant.hpp"
#include "engine/core/sha256.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_file.hpp"
#include "engine/model/model_config.hpp"
#include "engine/model/model_weights.hpp"
#include "engine/model/transformer.hpp"
#include "quantize/quantizable_linears.hpp"
#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::quantize {
namespace {

namespace fs = std::filesystem;
const std::string kSource = REFINERY_SOURCE_DIR;

struct ReaderCase {
  std::string model;      // source model directory (relative to the repo)
  std::string args;       // refine quantize options
  std::string reference;  // numpy reader output under tests/fixtures/quantize
  int bits;
};

const ReaderCase kCases[] = {
    {"models/demo-tiny-deepseek-v3", "--method rtn --bits 4 --group-size 64",
     "demo_w4g64_numpy.safetensors", 4},
    {"tests/fixtures/models/llama_bf16", "--method rtn --bits 8 --group-size 32 --symmetric",
     "llama_w8g32sym_numpy.safetensors", 8},
    {"tests/fixtures/models/llama_bf16", "--method rtn --bits 3 --group-size 64",
     "llama_w3g64_numpy.safetensors", 3},
};

std::string hex(const uint8_t* p, std::size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

std::vector<float> dequantized(const backend::AwqWeight& w) {
  std::vector<float> v(static_cast<std::size_t>(w.out * w.in));
  backend::awq_dequantize_rows(w, 0, w.out, v.data());
  return v;
}

class QuantizedModel : public ::testing::TestWithParam<ReaderCase> {
 protected:
  void SetUp() override {
    out_ = scratch_.file("q");
    const auto r = test::run_refine("quantize " + kSource + "/" + GetParam().model + " --out " + out_ +
                                    " " + GetParam().args);
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  test::ScratchDir scratch_;
  std::string out_;
};

TEST_P(QuantizedModel, EngineDequantEqualsTheIndependentNumpyReader) {
  const auto config = model::load_model_config(out_);
  ASSERT_EQ(config.quant.method, model::QuantMethod::kAwq);
  EXPECT_EQ(config.quant.bits, GetParam().bits);
  const io::Checkpoint ckpt = io::Checkpoint::open(out_);
  const model::ModelWeights weights = model::ModelWeights::load(ckpt, config);
  const io::SafetensorsFile ref = io::SafetensorsFile::open(
      fs::path(kSource) / "tests/fixtures/quantize" / GetParam().reference);
  int awq = 0, kept = 0, dense = 0;
  for (const LinearSite& site : quantizable_linears(weights)) {
    const auto* a = std::get_if<backend::AwqWeight>(&site.weight->storage);
    if (a == nullptr) {
      ++dense;
      EXPECT_EQ(ref.find(site.prefix + ".sha256"), nullptr) << site.prefix;
      continue;
    }
    ++awq;
    const std::vector<float> w = dequantized(*a);
    const io::TensorEntry* h = ref.find(site.prefix + ".sha256");
    ASSERT_NE(h, nullptr) << site.prefix << " is quantized but numpy found no qweight";
    const auto hb = ref.bytes(*h);
    EXPECT_EQ(sha256_hex(std::string_view(reinterpret_cast<const char*>(w.data()), w.size() * 4)),
              hex(reinterpret_cast<const uint8_t*>(hb.data()), hb.size()))
        << site.prefix;
    if (const io::TensorEntry* d = ref.find(site.prefix + ".dequant")) {
      ++kept;
      ASSERT_EQ(d->shape, (std::vector<int64_t>{a->out, a->in}));
      std::vector<float> np(w.size());
      std::memcpy(np.data(), ref.bytes(*d).data(), np.size() * 4);
      EXPECT_EQ(w, np) << site.prefix;
      // The CPU linear multiplies with exactly these weights (fp32 rounding of the sums).
      std::mt19937 rng(3);
      std::normal_distribution<float> dist;
      const int64_t rows = 5;
      Tensor x = Tensor::empty(DType::kF32, {rows, a->in});
      for (int64_t i = 0; i < x.numel(); ++i) x.mutable_data<float>()[i] = dist(rng);
      Tensor y = Tensor::empty(DType::kF32, {rows, a->out});
      backend::make_cpu_backend()->linear(x, *site.weight, y);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = 0; o < a->out; ++o) {
          double sum = 0, mag = 0;
          for (int64_t c = 0; c < a->in; ++c) {
            const double t = double(x.data<float>()[r * a->in + c]) * np[o * a->in + c];
            sum += t;
            mag += std::fabs(t);
          }
          ASSERT_NEAR(y.data<float>()[r * a->out + o], sum, 1e-6 * mag + 1e-12) << site.prefix;
        }
    }
  }
  int64_t ref_hashes = 0;
  for (const auto& e : ref.tensors()) ref_hashes += e.name.ends_with(".sha256") ? 1 : 0;
  EXPECT_EQ(awq, ref_hashes);
  EXPECT_GT(awq, 0);
  EXPECT_GT(kept, 0);
  EXPECT_GT(dense, 0);  // every case has a linear whose input size no group size divides
}

TEST_P(QuantizedModel, LogitsEqualTheDenseModelWithDequantizedWeights) {
  auto quantized = model::Transformer::load(out_, backend::make_cpu_backend());
  // The same model as a dense one: every AWQ linear's weight replaced by its dequantization.
  model::ModelConfig config = quantized->config();
  const io::Checkpoint ckpt = io::Checkpoint::open(out_);
  std::map<std::string, Tensor> tensors;
  for (const std::string& name : ckpt.names()) {
    const auto loc = ckpt.at(name);
    const auto bytes = ckpt.bytes(name);
    tensors[name] = Tensor::copy_of(loc.entry->dtype, loc.entry->shape, bytes.data());
  }
  int replaced = 0;
  for (const LinearSite& site : quantizable_linears(quantized->weights()))
    if (const auto* a = std::get_if<backend::AwqWeight>(&site.weight->storage)) {
      const std::vector<float> w = dequantized(*a);
      tensors[site.prefix + ".weight"] = Tensor::copy_of(DType::kF32, {a->out, a->in}, w.data());
      ++replaced;
    }
  ASSERT_GT(replaced, 0);
  config.quant = model::QuantConfig{};
  auto dense = std::make_unique<model::Transformer>(
      config, model::ModelWeights::from_tensors(tensors, config, "dequantized"),
      backend::make_cpu_backend());
  const std::vector<int32_t> tokens = {1, 17, 250, 3, 99, 42, 7, 300, 5, 11, 2, 64};
  const Tensor lq = quantized->forward(tokens), ld = dense->forward(tokens);
  ASSERT_EQ(lq.shape(), ld.shape());
  double max_diff = 0, max_abs = 0;
  for (int64_t i = 0; i < lq.numel(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(lq.data<float>()[i] - ld.data<float>()[i])));
    max_abs = std::max(max_abs, double(std::fabs(ld.data<float>()[i])));
  }
  EXPECT_LE(max_diff, 1e-5 * std::max(1.0, max_abs)) << "max |logit| " << max_abs;
}

INSTANTIATE_TEST_SUITE_P(Rtn, QuantizedModel, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::to_string(info.index); });

}  // namespace
}  // namespace refinery::quantize
