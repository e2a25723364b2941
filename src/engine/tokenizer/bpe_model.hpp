#pragma once
// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}): vocabulary, ranked merges, unknown
// token (optionally fused), byte fallback (<0xNN> tokens), ignore_merges, continuing_subword_prefix
// and end_of_word_suffix. A word is split into characters, each mapped to its id, then the pair of
// adjacent symbols with the lowest merge rank (leftmost on ties) is merged until none is left,
// using a priority queue over a linked list of symbols (as `tokenizers`' Word::merge_all does:
// O(n log n) per word). Results are cached per word (bounded, see kCacheCapacity).

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/tokenizer/json_where.hpp"

namespace refinery::tokenizer {

// Transparent string hash so maps keyed by std::string can be searched with a string_view.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  // Words up to this many bytes are cached (longer ones are rare and would bloat the cache).
  static constexpr std::size_t kMaxCachedWordBytes = 256;
  // At most this many words are cached; afterwards new words are encoded without caching.
  static constexpr std::size_t kCacheCapacity = 200000;

  static BpeModel from_json(const nlohmann::json& model, const JsonWhere& where);
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;
  ~BpeModel();

  // Appends the ids of `word` (valid UTF-8, non-empty) to `out`. Thread-safe.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token of `id`, or nullptr when the model has no such id.
  const std::string* id_to_token(int32_t id) const;
  std::size_t vocab_size() const { return vocab_.size(); }
  const Vocab& vocab() const { return vocab_; }

 private:
  BpeModel();
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  struct Cache;
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  Vocab vocab_;
  std::vector<const std::string*> id_to_token_;  // points into vocab_ keys (stable in node maps)
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  int32_t byte_ids_[256];  // ids of "<0xNN>" tokens, -1 when missing
  std::unique_ptr<Cache> cache_;
};

}  // namespace refinery::tokenizer
