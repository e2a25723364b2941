#pragma once
// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): cut a normalized piece of text into words that
// the BPE model encodes one by one. Supported types: Sequence, Split (String or Regex pattern, every
// behavior, invert), ByteLevel (add_prefix_space, use_regex with the GPT-2 pattern), Metaspace
// (replacement, prepend_scheme always/first/never or the legacy add_prefix_space, split), Digits,
// Whitespace, WhitespaceSplit. Semantics follow Hugging Face `tokenizers`: each step splits every
// current word; empty words are dropped.

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/tokenizer/json_where.hpp"
#include "engine/tokenizer/regex.hpp"

namespace refinery::tokenizer {

// A word being pre-tokenized. `at_start`: it begins at offset 0 of the original input (Metaspace's
// prepend_scheme "first" prepends only there).
struct Piece {
  std::string text;
  bool at_start = false;
};

class PreTokenizer {
 public:
  PreTokenizer() = default;
  // `spec` is the "pre_tokenizer" value (null means none: the whole piece is one word).
  static PreTokenizer from_json(const nlohmann::json& spec, const JsonWhere& where);

  // Splits `pieces` in place.
  void pre_tokenize(std::vector<Piece>& pieces) const;
  bool empty() const { return steps_.empty(); }
  // True when a ByteLevel step runs (the model then sees byte-level text).
  bool has_byte_level() const;

  enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

 private:
  enum class Kind { kSplit, kByteLevel, kMetaspace };
  enum class Prepend { kAlways, kFirst, kNever };
  struct Step {
    Kind kind{};
    std::shared_ptr<const Regex> regex;  // Split / ByteLevel with use_regex
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;       // ByteLevel
    std::string replacement;             // Metaspace (UTF-8 of one char)
    Prepend prepend = Prepend::kAlways;  // Metaspace
    bool split = true;                   // Metaspace
  };
  void add_from_json(const nlohmann::json& spec, const JsonWhere& where);
  void apply(const Step& step, const Piece& piece, std::vector<Piece>& out) const;

  std::vector<Step> steps_;
};

// Splits `text` at `matches` (sorted, non-overlapping [start, end) ranges) following `behavior`, as
// `tokenizers`' NormalizedString::split does; `invert` swaps matches and gaps. Appends the non-empty
// parts to `out`; the first part inherits `at_start`.
void split_by_matches(const std::string& text, bool at_start,
                      const std::vector<std::pair<std::size_t, std::size_t>>& matches,
                      PreTokenizer::Behavior behavior, bool invert, std::vector<Piece>& out);

}  // namespace refinery::tokenizer
