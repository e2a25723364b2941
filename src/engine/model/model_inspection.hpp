#pragma once
// What `refine inspect` reports about a model directory, computed from its config.json and the
// tensors actually present in its safetensors files (never from file sizes alone).

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/model/model_config.hpp"
#include "engine/model/parameter_count.hpp"

namespace refinery::model {

struct ModelInspection {
  std::filesystem::path directory;
  ModelConfig config;
  std::string architecture;         // config.json `architectures[0]`, empty if absent
  ParameterCounts from_tensors;     // tallied over the checkpoint's tensors
  ParameterCounts from_config;      // what the config implies (a mismatch means missing tensors)
  int64_t num_tensors = 0;
  int64_t tensor_bytes = 0;                    // sum of every tensor's data
  std::map<std::string, int64_t> bytes_by_dtype;  // safetensors dtype name -> bytes
  std::vector<std::string> unrecognized_tensors;  // names the family's naming does not explain
  int64_t kv_cache_bytes_per_token = 0;           // bf16 cache, all layers (see memory_estimate)
  std::optional<int64_t> tokenizer_vocab_size;    // when the directory has a tokenizer.json
};

// Reads config.json and every safetensors header of `directory` (weights are mapped, not read).
ModelInspection inspect_model(const std::filesystem::path& directory);

// Bytes of KV cache one token of context occupies across all layers, for a cache stored in
// `bytes_per_element` (2 for bf16). GQA: 2 (K and V) x kv_heads x head_dim per layer. MLA: the
// compressed latent (kv_lora_rank) + the shared rope key (qk_rope_head_dim) per layer, the layout
// our engine caches.
int64_t kv_cache_bytes_per_token(const ModelConfig& config, int bytes_per_element);

// One line per layer kind, e.g. "1 dense (SwiGLU 10944)", "26 MoE (64 experts x 1408, top-6, ...)".
std::vector<std::string> describe_layers(const ModelConfig& config);
// "MLA: 16 heads, q_lora -, kv_lora 512, qk nope/rope 128/64, v 128" or "GQA: 32 heads / 8 kv, ..."
std::string describe_attention(const ModelConfig& config);
// "yarn x40 (theta 10000, original 4096, interleaved pairs)"
std::string describe_rope(const ModelConfig& config);

}  // namespace refinery::model
