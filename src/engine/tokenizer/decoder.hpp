#pragma once
// Decoders of tokenizer.json ("decoder"): turn a list of token strings back into text. Supported
// types: Sequence, ByteLevel (byte-level characters back to bytes, then lossy UTF-8), Metaspace,
// Replace (String or Regex pattern), ByteFallback (<0xNN> runs back to bytes; an invalid run gives
// one U+FFFD per byte), Fuse, Strip. Without a decoder, tokens are joined with spaces (as
// `tokenizers` does).

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/tokenizer/json_where.hpp"
#include "engine/tokenizer/regex.hpp"

namespace refinery::tokenizer {

class Decoder {
 public:
  Decoder() = default;
  static Decoder from_json(const nlohmann::json& spec, const JsonWhere& where);
  std::string decode(std::vector<std::string> tokens) const;

 private:
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip };
  struct Step {
    Kind kind{};
    std::string pattern, content;        // Replace (literal pattern) / Metaspace replacement / Strip char
    std::shared_ptr<const Regex> regex;  // Replace with a Regex pattern
    std::size_t start = 0, stop = 0;     // Strip
    bool prefix_removed = true;          // Metaspace: prepend_scheme != never
  };
  void add_from_json(const nlohmann::json& spec, const JsonWhere& where);
  static void apply(const Step& step, std::vector<std::string>& tokens);

  std::vector<Step> steps_;
  bool has_decoder_ = false;
};

}  // namespace refinery::tokenizer
