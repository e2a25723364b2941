// Fuzz target for the config.json parser: any bytes that are JSON must either parse into a
// ModelConfig or throw refinery::Error (a user error naming the field). Other exception types,
// crashes, sanitizer reports and hangs are bugs. Bytes that are not JSON at all are skipped (that
// is nlohmann::json's job, not ours). Run with `scripts/fuzz.sh 60 model_config_fuzz`; without
// clang, CTest replays the seeds fuzz/corpus/model_config_fuzz/ (copies of
// tests/engine/model/configs/*.json).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/core/error.hpp"
#include "engine/model/model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  try {
    const auto parsed = refinery::model::parse_model_config(config, "fuzz-config.json");
    // Touch the derived queries too: they index per-layer data.
    int moe_layers = 0;
    for (int layer = 0; layer < parsed.num_layers && layer < 4096; ++layer) moe_layers += parsed.layer_is_moe(layer);
    volatile int sink = moe_layers + parsed.num_moe_layers();
    (void)sink;
  } catch (const refinery::Error&) {
    // Rejected config: the expected outcome for malformed data.
  }
  return 0;
}
