#include "engine/model/memory_estimate.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "engine/core/error.hpp"
#include "engine/core/progress.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/model/model_inspection.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::model {
namespace {

using refinery::test::error_message_of;

std::string fixture(const std::string& name) {
  return std::string(REFINERY_SOURCE_DIR) + "/tests/fixtures/models/" + name;
}

std::string hb(int64_t bytes) { return human_bytes(static_cast<double>(bytes)); }

// A small run every hand computation below uses: T = 10 rows, S = 20 cache positions, full
// logits in chunks of 4 rows, bf16 activations (b = 2).
RunShape small_run() {
  RunShape run;
  run.tokens_per_forward = 10;
  run.cache_positions = 20;
  run.top_k = 0;
  run.logits_chunk_rows = 4;
  run.activation_bytes = 2;
  return run;
}

constexpr int64_t kGiB = int64_t{1} << 30;

// llama_bf16: V 389, H 64, L 2, I 88, 4 heads / 2 kv heads of 16, max positions 256, rotary 16.
TEST(MemoryEstimate, GqaPartsByHand) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));
  const MemoryEstimate e = estimate_memory(c, 12345, small_run());
  EXPECT_EQ(e.weight_bytes, 12345);
  // KV: L x S x kv_heads x (dk + dv) x b = 2 * 20 * 2 * 32 * 2
  EXPECT_EQ(e.kv_cache_bytes, 5120);
  // residual: x, h [10, 64] x 2 bytes + ids 10 x 4 = 2560 + 40 = 2600
  // attention at o_proj: q 64 + k 32 + v 32 + out 64 + o 64 = 256 wide x 10 x 2 = 5120,
  //   + bf16 staging of out [10, 64] = 1280 -> 6400
  // MLP at down_proj: a 64 + gate 88 + up 88 + down 64 = 304 x 10 x 2 = 6080, + staging
  //   [10, 88] x 2 = 1760 -> 7840
  // peak 2600 + 7840 = 10440, +10% (1044) = 11484
  EXPECT_EQ(e.activation_bytes, 11484);
  // logits: f32 [4, 389] = 6224, +10% (622.4 -> 623) = 6847
  EXPECT_EQ(e.logits_bytes, 6847);
  // RoPE: cos + sin f32 [256, 8] = 2 * 256 * 8 * 4 = 16384 on top of the 1 GiB allowance
  EXPECT_EQ(e.workspace_bytes, kGiB + 16384);
  EXPECT_EQ(e.total(), 12345 + 5120 + 11484 + 6847 + kGiB + 16384);
}

TEST(MemoryEstimate, Float32ActivationsDoubleTheCacheAndActivations) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));
  RunShape run = small_run();
  run.activation_bytes = 4;
  const MemoryEstimate e = estimate_memory(c, 0, run);
  EXPECT_EQ(e.kv_cache_bytes, 10240);
  // residual 5120 + 40 = 5160; MLP 304 x 10 x 4 = 12160 + staging 1760 = 13920 (staging stays
  // bf16); peak 19080, +10% (1908) = 20988
  EXPECT_EQ(e.activation_bytes, 20988);
  EXPECT_EQ(e.logits_bytes, 6847);  // logits are f32 either way
}

// deepseek_v3_noaux: V 389, H 64, L 3 (layer 0 dense I 88, layers 1-2 MoE), MLA 4 heads,
// q_lora 24, kv_lora 32, nope 16, rope 8, v 12; 8 experts top-3 of width 24, 1 shared (24).
TEST(MemoryEstimate, MlaMoePartsByHand) {
  const ModelConfig c = load_model_config(fixture("deepseek_v3_noaux"));
  ASSERT_EQ(c.num_moe_layers(), 2);
  const MemoryEstimate e = estimate_memory(c, 0, small_run());
  // KV, expanded: L x S x heads x ((nope + rope) + v) x b = 3 * 20 * 4 * (24 + 12) * 2
  EXPECT_EQ(e.kv_cache_bytes, 17280);
  // ... which is more than the latent layout model_inspection reports: (32 + 8) x 3 x 2 per token
  EXPECT_EQ(kv_cache_bytes_per_token(c, 2) * 20, 4800);
  // residual 2600 (as for llama: H 64)
  // MLA query: q_a 24 + q 96 = 120 x 20 = 2400 + staging 24 x 20 = 480 -> 2880
  // MLA live at kv_b: q 96 + ckv 40 + c 32 + k_pe 8 + kv 4*28 = 288 wide -> 5760
  //   kv_b moment: + staging of c 32 x 20 = 640 -> 6400
  //   o_proj moment: + out 48 + o 64 = 112 x 20 = 2240, + staging 48 x 20 = 960 -> 8960
  // dense MLP (I 88): 7840
  // MoE base: a 64 + y 64 + logits 8 + weights 3 = 139 x 20 = 2780, + ids 3 x 40 = 120 -> 2900
  //   routed, N = 30: xs, outs 2 x 64 + gate, up 2 x 24 = 176 per pair x 30 x 2 = 10560,
  //   permutation 3 x 30 x 4 + offsets 11 x 4 + targets 10 x 4 = 360 + 44 + 40 = 444,
  //   staging [10, max(64, 24)] x 2 = 1280 -> 2900 + 10560 + 444 + 1280 = 15184
  //   shared: gate, up 24 + 24 + down 64 = 112 x 20 = 2240, + staging 24 x 20 = 480 -> 5620
  // peak 2600 + 15184 = 17784, +10% (1778.4 -> 1779) = 19563
  EXPECT_EQ(e.activation_bytes, 19563);
  EXPECT_EQ(e.logits_bytes, 6847);
  // RoPE: 2 * 128 * 4 * 4 (max positions 128, rotary = rope head dim 8)
  EXPECT_EQ(e.workspace_bytes, kGiB + 4096);
}

TEST(MemoryEstimate, MoeIncreasesActivations) {
  const ModelConfig moe = load_model_config(fixture("deepseek_v3_noaux"));
  ModelConfig dense = moe;
  dense.moe.reset();
  const int64_t with_moe = estimate_memory(moe, 0, small_run()).activation_bytes;
  const int64_t without = estimate_memory(dense, 0, small_run()).activation_bytes;
  // Without MoE: 2600 + max(8960 attention, 7840 MLP) = 11560, +10% = 12716.
  EXPECT_EQ(without, 12716);
  EXPECT_GT(with_moe, without);

  // More experts per token: more gathered rows. Mixtral top-2 -> top-4.
  ModelConfig mixtral = load_model_config(fixture("mixtral_8e_top2"));
  const int64_t top2 = estimate_memory(mixtral, 0, small_run()).activation_bytes;
  mixtral.moe->experts_per_token = 4;
  EXPECT_GT(estimate_memory(mixtral, 0, small_run()).activation_bytes, top2);
}

TEST(MemoryEstimate, TopkVersusFullLogits) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));
  RunShape run = small_run();
  run.top_k = 5;
  // top-k: scores f32 [10, min(16384, 389)] = 15560 + indices and values [10, 5] x 8 = 400;
  // 15960, +10% = 17556
  EXPECT_EQ(estimate_memory(c, 0, run).logits_bytes, 17556);
  run.top_k = 1000;  // more than the vocabulary: k is the vocabulary
  EXPECT_EQ(estimate_memory(c, 0, run).logits_bytes, 51348);  // (15560 + 10 x 389 x 8) + 10%
  // Full logits: chunk rows, not all rows; a chunk larger than the forward is the forward.
  run.top_k = 0;
  run.logits_chunk_rows = 256;
  EXPECT_EQ(estimate_memory(c, 0, run).logits_bytes, 15560 + 1556);  // f32 [10, 389], +10%

  // A real vocabulary: DeepSeek-V3's 129280 over 2048 rows. Full logits in chunks of 256 rows
  // take 256 x 129280 x 4; top-k 64 takes the 16384-wide chunk over all rows.
  ModelConfig big = c;
  big.vocab_size = 129280;
  RunShape full;
  RunShape topk;
  topk.top_k = 64;
  // 132382720 + 13238272
  EXPECT_EQ(estimate_memory(big, 0, full).logits_bytes, 145620992);
  // 2048 x 16384 x 4 + 2048 x 64 x 8 = 135266304, + 13526631
  EXPECT_EQ(estimate_memory(big, 0, topk).logits_bytes, 148792935);
}

TEST(MemoryEstimate, CacheHoldsAtLeastTheForwardAndRopeTablesGrow) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));  // max positions 256
  RunShape run = small_run();
  run.cache_positions = 5;  // fewer than the 10 rows: the cache must still hold the forward's rows
  EXPECT_EQ(estimate_memory(c, 0, run).kv_cache_bytes, 2560);  // 2 * 10 * 2 * 32 * 2
  run.cache_positions = 300;  // past the initial 256-row tables: they double to 512
  EXPECT_EQ(estimate_memory(c, 0, run).workspace_bytes, kGiB + 2 * 512 * 8 * 4);
  run.cache_positions = 1000;  // more than double: exactly what is needed
  EXPECT_EQ(estimate_memory(c, 0, run).workspace_bytes, kGiB + 2 * 1000 * 8 * 4);
  EXPECT_EQ(estimate_memory(c, 0, run).kv_cache_bytes, 2 * 1000 * 2 * 32 * 2);
}

TEST(MemoryEstimate, InvalidRunShapeIsAnInternalError) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));
  RunShape run = small_run();
  run.tokens_per_forward = 0;
  EXPECT_NE(error_message_of([&] { estimate_memory(c, 0, run); }, ErrorKind::kInternal)
                .find("tokens_per_forward 0"),
            std::string::npos);
  run = small_run();
  run.activation_bytes = 3;
  error_message_of([&] { estimate_memory(c, 0, run); }, ErrorKind::kInternal);
  run = small_run();
  run.top_k = -1;
  error_message_of([&] { estimate_memory(c, 0, run); }, ErrorKind::kInternal);
}

TEST(MemoryEstimate, DescribeHasOneLinePerPartAndTheTotal) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));
  const MemoryEstimate e = estimate_memory(c, 3 * kGiB, small_run());
  const std::string text = e.describe();
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 5) << text;
  for (const char* part : {"weights", "KV cache", "activations", "logits", "workspace", "total"})
    EXPECT_NE(text.find(part), std::string::npos) << part << " missing from\n" << text;
  EXPECT_NE(text.find("3.0 GiB"), std::string::npos) << text;          // weights
  EXPECT_NE(text.find("5.0 KiB"), std::string::npos) << text;          // KV cache 5120
  EXPECT_NE(text.find(hb(e.total())), std::string::npos) << text;      // 4.0 GiB
}

TEST(MemoryEstimate, FitsWhenFreeMemoryCoversTheTotal) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));
  const MemoryEstimate e = estimate_memory(c, 12345, small_run());
  EXPECT_NO_THROW(require_memory_fits(e, e.total(), 2 * e.total(), "Test GPU"));
  EXPECT_NO_THROW(require_memory_fits(e, 80 * kGiB, 80 * kGiB, "Test GPU"));
}

TEST(MemoryEstimate, RunTooLargeNamesTheNumbersAndTheRunFlags) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));
  RunShape run = small_run();
  run.top_k = 5;
  const MemoryEstimate e = estimate_memory(c, 12345, run);
  const int64_t free_bytes = e.total() - 1;  // one byte short; logits matter at this margin
  const int64_t total_bytes = 2 * kGiB;
  const std::string m = error_message_of(
      [&] { require_memory_fits(e, free_bytes, total_bytes, "Test GPU 2GB"); });
  for (const std::string& needle :
       {std::string("Test GPU 2GB"), hb(e.total()), std::to_string(e.total()) + " bytes",
        hb(free_bytes), std::to_string(free_bytes) + " bytes", hb(total_bytes),
        hb(e.kv_cache_bytes), hb(e.activation_bytes), hb(e.logits_bytes), hb(e.workspace_bytes),
        std::string("--seq-len"), std::string("batch"), std::string("--top-k"),
        std::string("GPU with more memory"), std::string("FP8/AWQ"),
        std::string("already in use")})
    EXPECT_NE(m.find(needle), std::string::npos) << "\"" << needle << "\" missing from:\n" << m;
  EXPECT_EQ(m.find("weights alone"), std::string::npos) << m;
}

TEST(MemoryEstimate, TopkAdviceOnlyWhenTheLogitsMatter) {
  const ModelConfig c = load_model_config(fixture("llama_bf16"));
  RunShape run = small_run();
  run.tokens_per_forward = 1000;
  run.cache_positions = 1000;
  const MemoryEstimate e = estimate_memory(c, 12345, run);
  // Room for the weights and the workspace and a little more: the shortfall is ~ the KV cache and
  // activations, more than 10x the 6.7 KiB logits chunk.
  const int64_t free_bytes = e.weight_bytes + e.workspace_bytes + 1000;
  const std::string m =
      error_message_of([&] { require_memory_fits(e, free_bytes, free_bytes, "Test GPU"); });
  EXPECT_NE(m.find("--seq-len"), std::string::npos) << m;
  EXPECT_EQ(m.find("--top-k"), std::string::npos) << m;
  EXPECT_EQ(m.find("already in use"), std::string::npos) << m;  // the card is empty
}

// DeepSeek-V3 (671B, FP8 release config), written here as the release's config.json says.
constexpr const char* kDeepseekV3Config = R"({
  "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
  "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
  "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_nextn_predict_layers": 1,
  "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1,
  "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
  "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
  "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
  "moe_layer_freq": 1, "first_k_dense_replace": 3, "norm_topk_prob": true,
  "scoring_func": "sigmoid", "hidden_act": "silu", "max_position_embeddings": 163840,
  "rms_norm_eps": 1e-06, "tie_word_embeddings": false, "rope_theta": 10000,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                   "type": "yarn"},
  "attention_bias": false, "torch_dtype": "bfloat16",
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]}
})";

TEST(MemoryEstimate, DeepseekV3Fp8DoesNotFitAnH100) {
  refinery::test::ScratchDir dir;
  dir.write("config.json", kDeepseekV3Config);
  const ModelConfig c = load_model_config(dir.path());
  const MemoryEstimate e = estimate_memory(c, int64_t{671'000'000'000}, RunShape{});
  // Default run: 2048 rows and positions, full logits, bf16.
  // KV (expanded MLA): 61 layers x 2048 x 128 heads x (192 + 128) x 2 = 10234101760 (~9.5 GiB);
  // the latent layout would be (512 + 64) x 61 x 2 x 2048 = 143917056.
  EXPECT_EQ(e.kv_cache_bytes, int64_t{10'234'101'760});
  EXPECT_EQ(kv_cache_bytes_per_token(c, 2) * 2048, 143'917'056);
  // Activations, T = 2048, b = 2:
  //   residual: 2048 x 14336 x 2 + 2048 x 4 = 58728448
  //   MLA o_proj moment: live q 24576 + ckv 576 + c 512 + k_pe 64 + kv 128 x 256 = 58496 wide
  //     -> 239599616, + out 16384 + o 7168 -> 96468992, + staging [2048, 16384] 67108864
  //     = 403177472
  //   dense MLP (18432): 2048 x 51200 x 2 + 2048 x 18432 x 2 = 285212672
  //   MoE: base 2048 x (14336 + 256 + 8) x 2 + 2048 x 8 x 4 = 59867136;
  //     routed 2048 x 8 x (14336 + 4096) x 2 = 603979776, permutation (3 x 16384 + 2 x 2048)
  //     x 4 + 4 = 212996, staging 2048 x 7168 x 2 = 29360128 -> 693420036
  //   peak 58728448 + 693420036 = 752148484, +10% (75214848.4 -> 75214849) = 827363333
  EXPECT_EQ(e.activation_bytes, 827'363'333);
  EXPECT_EQ(e.logits_bytes, 145'620'992);  // f32 [256, 129280], +10%
  // RoPE: 2 x 4096 x 32 x 4 (the tables start at 4096 positions)
  EXPECT_EQ(e.workspace_bytes, kGiB + 1'048'576);

  const int64_t total_bytes = int64_t{80'000'000'000}, free_bytes = int64_t{79'000'000'000};
  const std::string m = error_message_of(
      [&] { require_memory_fits(e, free_bytes, total_bytes, "NVIDIA H100 80GB HBM3"); });
  for (const std::string& needle :
       {std::string("NVIDIA H100 80GB HBM3"), std::string("624.9 GiB"),  // the weights
        std::string("9.5 GiB"),                                          // the KV cache
        hb(e.total()), std::string("73.6 GiB"), std::string("74.5 GiB"),  // free, total
        std::string("the weights alone"), std::string("GPU with more memory"),
        std::string("AWQ"), std::string("FP8")})
    EXPECT_NE(m.find(needle), std::string::npos) << "\"" << needle << "\" missing from:\n" << m;
  // Shrinking the run cannot help, so the message does not suggest it.
  EXPECT_EQ(m.find("--seq-len"), std::string::npos) << m;
  EXPECT_EQ(m.find("already in use"), std::string::npos) << m;
}

TEST(MemoryEstimate, CheckpointWeightBytesSumsEveryTensor) {
  const io::Checkpoint ckpt = io::Checkpoint::open(fixture("llama_bf16"));
  int64_t sum = 0;
  for (const std::string& name : ckpt.names()) sum += static_cast<int64_t>(ckpt.bytes(name).size());
  EXPECT_GT(sum, 0);
  EXPECT_EQ(checkpoint_weight_bytes(ckpt), sum);
}

}  // namespace
}  // namespace refinery::model
