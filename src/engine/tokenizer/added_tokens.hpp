#pragma once
// Added and special tokens ("added_tokens" of tokenizer.json). They are found in the text before the
// model sees it and are never split: tokens with normalized=false are matched in the raw input,
// tokens with normalized=true in each normalized non-token piece (their own content normalized the
// same way). Matching is leftmost-longest over all contents, as `tokenizers` (Aho-Corasick,
// MatchKind::LeftmostLongest) does; single_word drops a match that touches a word character (\w)
// on either side; lstrip/rstrip make the token swallow the whitespace on its left/right.

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer/json_where.hpp"

namespace refinery::tokenizer {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  std::string text;  // what decode() and id_to_token() give: the content, normalized when `normalized`
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = true;
  bool special = false;
};

// Reads "added_tokens" and gives every token its id the way `tokenizers` does (AddedVocabulary::
// add_tokens): a content already added or in the model keeps that id; a new one gets
// max(added ids) + 1, or the model's vocabulary size when no added id reaches it. The "id" in the
// file is only checked (a warning when it differs, as `tokenizers` logs). Returns one token per id,
// in file order. `model_id` looks a content up in the model; `normalize` gives `text`.
std::vector<AddedToken> load_added_tokens(const nlohmann::json& list, const JsonWhere& where,
                                          const std::function<std::optional<int32_t>(std::string_view)>& model_id,
                                          std::size_t model_vocab_size,
                                          const std::function<std::string(const std::string&)>& normalize);

// A part of a text: either an added token (id set) or plain text (id empty), [start, end) in bytes.
struct Segment {
  std::size_t start, end;
  std::optional<int32_t> id;
};

// Finds a fixed set of added tokens in text (a byte trie; leftmost-longest).
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  // `patterns[i]` is what to look for (a token's content, or its normalized form) for tokens[i].
  AddedTokenMatcher(std::vector<std::string> patterns, std::vector<const AddedToken*> tokens);

  bool empty() const { return tokens_.empty(); }
  // Cuts `text` into segments covering it, in order (an empty text gives no segment), as
  // `tokenizers`' AddedVocabulary::find_matches does.
  void split(std::string_view text, std::vector<Segment>& out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
    int32_t token = -1;                                       // index into tokens_ when a pattern ends here
  };
  int32_t child(int32_t node, unsigned char byte) const;
  // Longest pattern starting at `pos`: its index and length, or -1.
  int32_t longest_at(std::string_view text, std::size_t pos, std::size_t& length) const;

  std::vector<Node> nodes_;
  std::vector<const AddedToken*> tokens_;
  bool first_byte_[256] = {};
};

}  // namespace refinery::tokenizer
