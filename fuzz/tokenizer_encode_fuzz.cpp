// Fuzz target for encode/decode on real tokenizers: arbitrary bytes are encoded with the
// Llama-2-style tokenizer (data/tokenizers/llama-2), the DeepSeek-V3 one and a Qwen2-style one
// (DeepSeek-V3 vocabulary + tests/fixtures/tokenizer/qwen2_style_patch.json: NFC normalizer), and
// the ids are decoded. For valid UTF-8 input, properties that must hold are checked and abort() on
// failure, so libFuzzer reports the input:
//   DeepSeek-V3 (byte-level BPE, no normalizer): decode(encode(s)) == s;
//   Qwen2-style (NFC, byte-level):               decode(encode(s)) == NFC(s), when s holds no "<|"
//   (added tokens are cut out before NFC, so e.g. "<|im_end|>" + U+0338 keeps its ">").
// Invalid UTF-8 must not crash (it is repaired to U+FFFD). The repository is found from the
// REFINERY_SOURCE_DIR environment variable, else by walking up from the executable and from the
// current directory to a folder holding data/tokenizers/llama-2/tokenizer.json.
// Run with `scripts/fuzz.sh 60 tokenizer_encode_fuzz`; CTest replays fuzz/corpus/tokenizer_encode_fuzz/.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/tokenizer/tokenizer.hpp"
#include "engine/tokenizer/unicode_normalization.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace {

namespace fs = std::filesystem;
using refinery::tokenizer::Tokenizer;

bool is_repo_root(const fs::path& dir) {
  std::error_code ec;
  return fs::exists(dir / "data/tokenizers/llama-2/tokenizer.json", ec);
}

fs::path find_repo_root() {
  if (const char* env = std::getenv("REFINERY_SOURCE_DIR"); env && is_repo_root(env)) return env;
  std::error_code ec;
  for (fs::path start : {fs::read_symlink("/proc/self/exe", ec), fs::current_path(ec)}) {
    for (fs::path dir = start; !dir.empty(); dir = dir.parent_path()) {
      if (is_repo_root(dir)) return dir;
      if (dir == dir.parent_path()) break;
    }
  }
  std::fprintf(stderr,
               "tokenizer_encode_fuzz: cannot find data/tokenizers/llama-2/tokenizer.json. Set "
               "REFINERY_SOURCE_DIR to the repository root (the folder holding data/tokenizers/).\n");
  std::exit(1);
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return nlohmann::json::parse(buffer.str());
}

struct Tokenizers {
  Tokenizer llama, deepseek, qwen;
};

const Tokenizers& tokenizers() {
  static const Tokenizers t = [] {
    try {
      const fs::path root = find_repo_root();
      const auto deepseek_path = root / "data/tokenizers/deepseek-v3/tokenizer.json";
      const nlohmann::json deepseek_json = read_json(deepseek_path);
      nlohmann::json qwen_json = deepseek_json;
      const nlohmann::json patch = read_json(root / "tests/fixtures/tokenizer/qwen2_style_patch.json");
      for (auto it = patch["set"].begin(); it != patch["set"].end(); ++it) qwen_json[it.key()] = it.value();
      for (auto it = patch["model"].begin(); it != patch["model"].end(); ++it) qwen_json["model"][it.key()] = it.value();
      return Tokenizers{Tokenizer::load(root / "data/tokenizers/llama-2"),
                        Tokenizer::from_json(deepseek_json, nullptr, deepseek_path.string()),
                        Tokenizer::from_json(qwen_json, nullptr, "qwen2-style tokenizer.json")};
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tokenizer_encode_fuzz: loading the tokenizers failed: %s\n", e.what());
      std::exit(1);
    }
  }();
  return t;
}

void check_round_trip(const Tokenizer& tok, std::string_view text, const std::string& expected, const char* name) {
  const std::vector<int32_t> ids = tok.encode(text);
  const std::string decoded = tok.decode(ids);
  if (decoded != expected) {
    std::fprintf(stderr, "%s: decode(encode(s)) != %s for an input of %zu bytes (got %zu bytes)\n", name,
                 name[0] == 'Q' ? "NFC(s)" : "s", text.size(), decoded.size());
    std::abort();
  }
}

}  // namespace

// libFuzzer calls this once before fuzzing: the tokenizers load here, outside the per-input timeout
// (loading the 8 MB DeepSeek-V3 file twice takes seconds under ASan). replay_main.cpp does not
// call it; there the first input loads them.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  refinery::log::set_level(refinery::log::Level::kError);
  (void)tokenizers();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The invalid-UTF-8 warning would flood the fuzzer output.
  static const bool quiet = (refinery::log::set_level(refinery::log::Level::kError), true);
  (void)quiet;
  const Tokenizers& t = tokenizers();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    // Llama-2 (Metaspace, byte fallback): no exact round trip (the prepended "▁" and leading
    // spaces), so only "no crash" and decodable ids.
    for (const bool special : {false, true}) {
      const auto ids = t.llama.encode(text, special);
      volatile std::size_t sink = t.llama.decode(ids, special).size();
      (void)sink;
    }
    if (refinery::tokenizer::utf8::is_valid(text)) {
      check_round_trip(t.deepseek, text, std::string(text), "DeepSeek-V3");
      if (text.find("<|") == std::string_view::npos)
        check_round_trip(t.qwen, text,
                         refinery::tokenizer::unicode::normalize(text, refinery::tokenizer::unicode::NormalizationForm::kNFC),
                         "Qwen2-style");
    } else {
      volatile std::size_t sink = t.deepseek.decode(t.deepseek.encode(text)).size() + t.qwen.encode(text).size();
      (void)sink;
    }
  } catch (const refinery::Error& e) {
    // Encoding any bytes must succeed: a thrown error here is a bug.
    std::fprintf(stderr, "tokenizer_encode_fuzz: unexpected error: %s\n", e.what());
    std::abort();
  }
  return 0;
}
