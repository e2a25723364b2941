#include "engine/tokenizer/bpe_model.hpp"

#include <cstdio>
#include <mutex>
#include <queue>

#include "engine/core/log.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer {

struct BpeModel::Cache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
};

BpeModel::BpeModel() : cache_(std::make_unique<Cache>()) {
  for (int32_t& id : byte_ids_) id = -1;
}
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;
BpeModel::~BpeModel() = default;

namespace {
std::string optional_string(const nlohmann::json& obj, const char* key, const JsonWhere& where) {
  const auto* value = find_member(obj, key);
  if (!value || value->is_null()) return {};
  if (!value->is_string())
    throw_user_error(where.at(key).str(), ": expected a string or null, found ", value->type_name(), ".");
  return value->get<std::string>();
}
}  // namespace

BpeModel BpeModel::from_json(const nlohmann::json& model, const JsonWhere& where) {
  BpeModel bpe;
  // vocab: {"token": id, ...}
  const auto& vocab = require_member(model, "vocab", where);
  if (!vocab.is_object())
    throw_user_error(where.at("vocab").str(), ": expected an object {token: id}, found ", vocab.type_name(), ".");
  bpe.vocab_.reserve(vocab.size());
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX)
      throw_user_error(where.at("vocab").at(it.key()).str(), ": expected a token id (integer >= 0), found ",
                       it.value().dump(), ".");
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    bpe.vocab_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  bpe.id_to_token_.assign(static_cast<std::size_t>(max_id + 1), nullptr);
  for (const auto& [token, id] : bpe.vocab_) bpe.id_to_token_[static_cast<std::size_t>(id)] = &token;

  bpe.continuing_subword_prefix_ = optional_string(model, "continuing_subword_prefix", where);
  bpe.end_of_word_suffix_ = optional_string(model, "end_of_word_suffix", where);
  bpe.fuse_unk_ = optional_bool(model, "fuse_unk", false, where);
  bpe.byte_fallback_ = optional_bool(model, "byte_fallback", false, where);
  bpe.ignore_merges_ = optional_bool(model, "ignore_merges", false, where);
  if (const auto* dropout = find_member(model, "dropout"); dropout && !dropout->is_null()) {
    if (!dropout->is_number())
      throw_user_error(where.at("dropout").str(), ": expected a number or null.");
    if (dropout->get<double>() > 0.0)
      log::warn(where.at("dropout").str(), ": BPE dropout ", dropout->get<double>(),
                " is ignored (encoding is deterministic; set it to null to silence this warning)");
  }
  const std::string unk = optional_string(model, "unk_token", where);
  if (!unk.empty()) {
    auto it = bpe.vocab_.find(unk);
    if (it == bpe.vocab_.end())
      throw_user_error(where.at("unk_token").str(), ": the unknown token \"", unk,
                       "\" is not in the vocabulary. Add it to model.vocab or set unk_token to null.");
    bpe.unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    if (auto it = bpe.vocab_.find(std::string_view(name)); it != bpe.vocab_.end()) bpe.byte_ids_[b] = it->second;
  }

  // merges: ["a b", ...] (legacy) or [["a", "b"], ...]; the index is the rank.
  const auto* merges = find_member(model, "merges");
  if (merges && !merges->is_null()) {
    if (!merges->is_array())
      throw_user_error(where.at("merges").str(), ": expected a list of merges, found ", merges->type_name(), ".");
    bpe.merges_.reserve(merges->size());
    const std::size_t prefix = bpe.continuing_subword_prefix_.size();
    for (std::size_t i = 0; i < merges->size(); ++i) {
      const auto& m = (*merges)[i];
      const JsonWhere at = where.at("merges").at(i);
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const std::size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
          throw_user_error(at.str(), ": expected \"left right\" (two tokens separated by one space), found \"", s, "\".");
        a = s.substr(0, space);
        b = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        throw_user_error(at.str(), ": expected \"left right\" or [\"left\", \"right\"], found ", m.dump(), ".");
      }
      const auto ia = bpe.vocab_.find(a), ib = bpe.vocab_.find(b);
      if (ia == bpe.vocab_.end() || ib == bpe.vocab_.end())
        throw_user_error(at.str(), ": the merge token \"", ia == bpe.vocab_.end() ? a : b,
                         "\" is not in model.vocab. The file is inconsistent; re-export it.");
      std::string merged = a + (b.compare(0, prefix, bpe.continuing_subword_prefix_) == 0 ? b.substr(prefix) : b);
      const auto im = bpe.vocab_.find(merged);
      if (im == bpe.vocab_.end())
        throw_user_error(at.str(), ": the merged token \"", merged,
                         "\" is not in model.vocab. The file is inconsistent; re-export it.");
      // A later duplicate overrides an earlier one, as in `tokenizers`.
      bpe.merges_[pair_key(ia->second, ib->second)] = {static_cast<uint32_t>(i), im->second};
    }
  }
  return bpe;
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= id_to_token_.size()) return nullptr;
  return id_to_token_[static_cast<std::size_t>(id)];
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (auto it = cache_->words.find(word); it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const std::size_t first = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->words.size() < kCacheCapacity)
      cache_->words.emplace(std::string(word), std::vector<int32_t>(out.begin() + static_cast<std::ptrdiff_t>(first), out.end()));
  }
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  // 1. Characters to initial symbols (with byte fallback / unknown token).
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  std::optional<int32_t> pending_unk;  // an unknown run not yet emitted (fuse_unk joins runs)
  std::string scratch;
  std::size_t pos = 0;
  while (pos < word.size()) {
    const std::size_t start = pos;
    pos += std::min(utf8::sequence_length(static_cast<unsigned char>(word[pos])), word.size() - pos);
    std::string_view piece = word.substr(start, pos - start);
    const bool affixed = (start > 0 && !continuing_subword_prefix_.empty()) ||
                         (pos == word.size() && !end_of_word_suffix_.empty());
    if (affixed) {
      scratch.clear();
      if (start > 0) scratch += continuing_subword_prefix_;
      scratch += piece;
      if (pos == word.size()) scratch += end_of_word_suffix_;
      piece = scratch;
    }
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      if (pending_unk) {
        ids.push_back(*pending_unk);
        pending_unk.reset();
      }
      ids.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : piece) all = all && byte_ids_[b] >= 0;
      if (all) {
        // As in `tokenizers`, a pending unknown run is not flushed before byte tokens.
        for (unsigned char b : piece) ids.push_back(byte_ids_[b]);
        continue;
      }
    }
    if (unk_id_) {
      if (pending_unk && !fuse_unk_) ids.push_back(*pending_unk);
      pending_unk = *unk_id_;
    }
    // Without an unknown token the character is dropped, as in `tokenizers`.
  }
  if (pending_unk) ids.push_back(*pending_unk);

  const std::size_t n = ids.size();
  if (n <= 1 || merges_.empty()) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }

  // 2. Merge by rank: a min-queue of (rank, position) over a doubly linked list of symbols.
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // -1 at the ends
    bool alive;
  };
  std::vector<Symbol> symbols(n);
  for (std::size_t i = 0; i < n; ++i)
    symbols[i] = {ids[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1, true};
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  for (std::size_t i = 0; i + 1 < n; ++i)
    if (auto it = merges_.find(pair_key(ids[i], ids[i + 1])); it != merges_.end())
      queue.push({it->second.rank, static_cast<int32_t>(i), it->second.new_id});

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<std::size_t>(top.pos)];
    if (!left.alive || left.next < 0) continue;
    const int32_t right_pos = left.next;
    Symbol& right = symbols[static_cast<std::size_t>(right_pos)];
    // Stale entry: the pair at this position changed since it was queued (`tokenizers` compares
    // only the merged id, so do we).
    auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    left.next = right.next;
    right.alive = false;
    if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.pos;
    if (left.prev >= 0) {
      const Symbol& prev = symbols[static_cast<std::size_t>(left.prev)];
      if (auto m = merges_.find(pair_key(prev.id, left.id)); m != merges_.end())
        queue.push({m->second.rank, left.prev, m->second.new_id});
    }
    if (left.next >= 0) {
      const Symbol& next = symbols[static_cast<std::size_t>(left.next)];
      if (auto m = merges_.find(pair_key(left.id, next.id)); m != merges_.end())
        queue.push({m->second.rank, top.pos, m->second.new_id});
    }
  }
  for (const Symbol& s : symbols)
    if (s.alive) out.push_back(s.id);
}

}  // namespace refinery::tokenizer
