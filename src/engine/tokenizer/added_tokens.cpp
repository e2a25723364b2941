#include "engine/tokenizer/added_tokens.hpp"

#include <algorithm>
#include <unordered_map>

#include "engine/core/log.hpp"

#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer {
namespace {

// \w in the Rust regex crate: alphanumeric, marks, connector punctuation, join controls. We
// approximate with ASCII word characters plus every non-ASCII letter/digit-like code point that is
// not whitespace or common punctuation; only single_word tokens use this.
bool is_word_char(char32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  if (utf8::is_whitespace(cp)) return false;
  if (cp >= 0x2000 && cp <= 0x206F) return cp == 0x200C || cp == 0x200D || cp == 0x203F || cp == 0x2040;
  if (cp >= 0x3000 && cp <= 0x303F) return false;  // CJK punctuation
  if (cp >= 0xFF00 && cp <= 0xFF0F) return false;  // full-width punctuation
  return cp != 0xA0 && !(cp >= 0xA1 && cp <= 0xBF && cp != 0xAA && cp != 0xB5 && cp != 0xBA);
}

char32_t last_char(std::string_view text) {
  std::size_t start = text.size() - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return utf8::decode_at(text, start);
}

}  // namespace

std::vector<AddedToken> load_added_tokens(const nlohmann::json& list, const JsonWhere& where,
                                          const std::function<std::optional<int32_t>(std::string_view)>& model_id,
                                          std::size_t model_vocab_size,
                                          const std::function<std::string(const std::string&)>& normalize) {
  std::vector<AddedToken> tokens;
  if (list.is_null()) return tokens;
  if (!list.is_array()) throw_user_error(where.str(), ": expected a list of tokens.");
  std::unordered_map<std::string, int32_t> id_of;       // content -> id
  std::unordered_map<int32_t, std::size_t> index_of;    // id -> position in `tokens`
  std::optional<int32_t> max_id;
  const auto vocab_size = static_cast<int64_t>(model_vocab_size);
  for (std::size_t i = 0; i < list.size(); ++i) {
    const JsonWhere at = where.at(i);
    const auto& entry = list[i];
    AddedToken token;
    const auto& file_id = require_member(entry, "id", at);
    if (!file_id.is_number_integer())
      throw_user_error(at.at("id").str(), ": expected a token id (integer), found ", file_id.dump(), ".");
    token.content = require_string(entry, "content", at);
    token.single_word = optional_bool(entry, "single_word", false, at);
    token.lstrip = optional_bool(entry, "lstrip", false, at);
    token.rstrip = optional_bool(entry, "rstrip", false, at);
    token.special = optional_bool(entry, "special", false, at);
    token.normalized = optional_bool(entry, "normalized", !token.special, at);
    if (token.content.empty()) continue;  // `tokenizers` ignores empty tokens
    if (auto it = id_of.find(token.content); it != id_of.end()) {
      token.id = it->second;
    } else if (auto id = model_id(token.content)) {
      token.id = *id;
    } else if (!max_id) {
      token.id = static_cast<int32_t>(vocab_size);
    } else {
      token.id = (*max_id >= vocab_size || vocab_size == 0) ? *max_id + 1 : static_cast<int32_t>(vocab_size);
    }
    if (token.id != file_id.get<int64_t>())
      log::warn(at.str(), ": the token \"", token.content, "\" is listed with id ", file_id.get<int64_t>(),
                " but gets id ", token.id, " (as in Hugging Face `tokenizers`)");
    token.text = token.normalized ? normalize(token.content) : token.content;
    id_of[token.content] = token.id;
    max_id = std::max(max_id.value_or(token.id), token.id);
    if (auto it = index_of.find(token.id); it != index_of.end()) {
      tokens[it->second] = std::move(token);  // a later entry for the same id replaces the earlier
    } else {
      index_of[token.id] = tokens.size();
      tokens.push_back(std::move(token));
    }
  }
  return tokens;
}

AddedTokenMatcher::AddedTokenMatcher(std::vector<std::string> patterns, std::vector<const AddedToken*> tokens)
    : tokens_(std::move(tokens)) {
  nodes_.emplace_back();
  for (std::size_t i = 0; i < patterns.size(); ++i) {
    const std::string& p = patterns[i];
    if (p.empty()) continue;
    first_byte_[static_cast<unsigned char>(p[0])] = true;
    int32_t node = 0;
    for (unsigned char b : p) {
      int32_t next = child(node, b);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        auto& kids = nodes_[static_cast<std::size_t>(node)].children;
        kids.insert(std::lower_bound(kids.begin(), kids.end(), std::make_pair(b, int32_t{-1})),
                    std::make_pair(b, next));
        nodes_.emplace_back();
      }
      node = next;
    }
    // The first pattern with a given content wins (duplicates cannot differ in what they match).
    if (nodes_[static_cast<std::size_t>(node)].token < 0) nodes_[static_cast<std::size_t>(node)].token = static_cast<int32_t>(i);
  }
}

int32_t AddedTokenMatcher::child(int32_t node, unsigned char byte) const {
  const auto& kids = nodes_[static_cast<std::size_t>(node)].children;
  auto it = std::lower_bound(kids.begin(), kids.end(), std::make_pair(byte, int32_t{-1}));
  return it != kids.end() && it->first == byte ? it->second : -1;
}

int32_t AddedTokenMatcher::longest_at(std::string_view text, std::size_t pos, std::size_t& length) const {
  int32_t best = -1, node = 0;
  for (std::size_t i = pos; i < text.size(); ++i) {
    node = child(node, static_cast<unsigned char>(text[i]));
    if (node < 0) break;
    if (nodes_[static_cast<std::size_t>(node)].token >= 0) {
      best = nodes_[static_cast<std::size_t>(node)].token;
      length = i + 1 - pos;
    }
  }
  return best;
}

void AddedTokenMatcher::split(std::string_view text, std::vector<Segment>& out) const {
  if (text.empty()) return;
  std::size_t start_offset = 0;  // end of the previous emitted token
  std::size_t pos = 0;           // where the next search starts (end of the previous raw match)
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    std::size_t length = 0;
    const int32_t index = longest_at(text, pos, length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = *tokens_[static_cast<std::size_t>(index)];
    std::size_t start = pos, stop = pos + length;
    pos = stop;  // the search resumes after the raw match, whatever rstrip swallows
    if (token.single_word) {
      const bool word_before = start > 0 && is_word_char(last_char(text.substr(0, start)));
      std::size_t probe = stop;
      const bool word_after = stop < text.size() && is_word_char(utf8::decode_at(text, probe));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) {
      std::size_t new_start = start;
      while (new_start > 0) {
        std::size_t prev = new_start - 1;
        while (prev > 0 && (static_cast<unsigned char>(text[prev]) & 0xC0) == 0x80) --prev;
        std::size_t probe = prev;
        if (!utf8::is_whitespace(utf8::decode_at(text, probe))) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        std::size_t probe = stop;
        if (!utf8::is_whitespace(utf8::decode_at(text, probe))) break;
        stop = probe;
      }
    }
    if (start_offset < start) out.push_back({start_offset, start, std::nullopt});
    out.push_back({start, stop, token.id});
    start_offset = stop;
  }
  if (start_offset < text.size()) out.push_back({start_offset, text.size(), std::nullopt});
}

}  // namespace refinery::tokenizer
