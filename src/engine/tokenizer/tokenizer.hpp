#pragma once
// Refinery's tokenizer: reads a Hugging Face tokenizer.json (+ tokenizer_config.json next to it)
// and encodes/decodes exactly like Hugging Face `tokenizers`
// (`Tokenizer.from_file(path).encode(text, add_special_tokens=...).ids` and `.decode(ids, ...)`).
//
// Supported: BPE models (byte-level, as DeepSeek-V3 / Qwen2 / Llama-3, and SentencePiece-style with
// byte_fallback, as Llama-2 / Mistral); the normalizers, pre-tokenizers, decoders and
// post-processors listed in normalizer.hpp, pre_tokenizer.hpp, decoder.hpp and post_processor.hpp;
// added/special tokens with their lstrip/rstrip/single_word/normalized flags (added_tokens.hpp).
// WordPiece, Unigram and WordLevel models are a user error.
//
// Pipeline of encode(): repair invalid UTF-8 -> cut out added tokens with normalized=false in the
// raw text -> normalize each remaining piece -> cut out added tokens with normalized=true ->
// pre-tokenize into words -> BPE per word (cached) -> with add_special_tokens, the post-processor's
// template.
//
// add_special_tokens follows the tokenizer.json post_processor, not add_bos_token/add_eos_token of
// tokenizer_config.json: that is what `tokenizers` and transformers 5.x do for the two reference
// tokenizers (DeepSeek-V3's post_processor is ByteLevel, so no BOS is added; Llama-2's is a
// TemplateProcessing "<s> $A"). bos_id()/eos_id() report the tokens tokenizer_config.json names so
// callers that want a BOS regardless can prepend it.
//
// Invalid UTF-8 input is repaired, never rejected: each maximal invalid subsequence becomes U+FFFD
// (Rust String::from_utf8_lossy = Python bytes.decode("utf-8", "replace")), with one warning per
// encode() call.
//
// A Tokenizer is immutable after load (the BPE word cache is internally synchronized): encode and
// decode may run from several threads. Copies share the loaded state.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace refinery::tokenizer {

// The tokenizer.json that `path` names: the file itself, or `path/tokenizer.json` for a directory.
// User error if it does not exist.
std::filesystem::path tokenizer_json_path(const std::filesystem::path& path);

class Tokenizer {
 public:
  // `path`: a tokenizer.json file, or a directory holding one. tokenizer_config.json in the same
  // directory is read when present (BOS/EOS names). Throws a user error naming the file and JSON
  // path on a missing file, invalid JSON or an unsupported component.
  static Tokenizer load(const std::filesystem::path& path);

  // Builds from parsed JSON. `config` may be null (no tokenizer_config.json). `source` and
  // `config_source` name the origins in error messages (e.g. the file paths).
  static Tokenizer from_json(const nlohmann::json& tokenizer_json, const nlohmann::json* config,
                             const std::string& source,
                             const std::string& config_source = "tokenizer_config.json");

  // Token ids of `text` (any bytes; invalid UTF-8 is repaired, see above).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;

  // Text of `ids`. Unknown ids are skipped (as `tokenizers` does); with skip_special_tokens, added
  // tokens marked special are left out.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // Number of distinct tokens: the model vocabulary plus added tokens not already in it (what
  // `tokenizers`' get_vocab_size(with_added_tokens=True) returns).
  std::size_t vocab_size() const;
  // Added tokens first, then the model vocabulary.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // Throws a user error when no token has this id.
  std::string id_to_token(int32_t id) const;

  struct State;

 private:
  explicit Tokenizer(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  std::shared_ptr<const State> state_;
};

}  // namespace refinery::tokenizer
