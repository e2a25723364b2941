#include "engine/tokenizer/tokenizer.hpp"

#include <fstream>
#include <sstream>
#include <unordered_map>

#include "engine/core/log.hpp"
#include "engine/tokenizer/added_tokens.hpp"
#include "engine/tokenizer/bpe_model.hpp"
#include "engine/tokenizer/decoder.hpp"
#include "engine/tokenizer/normalizer.hpp"
#include "engine/tokenizer/post_processor.hpp"
#include "engine/tokenizer/pre_tokenizer.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer {

struct Tokenizer::State {
  std::string source;
  Normalizer normalizer;
  PreTokenizer pre_tokenizer;
  BpeModel model;
  Decoder decoder;
  PostProcessor post_processor;
  std::vector<AddedToken> added;  // in file order
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> added_by_content;
  std::unordered_map<int32_t, const AddedToken*> added_by_id;
  AddedTokenMatcher raw_matcher;         // normalized=false tokens, matched in the raw text
  AddedTokenMatcher normalized_matcher;  // normalized=true tokens, matched after normalization
  std::optional<int32_t> bos, eos;
  std::size_t vocab_size = 0;

  explicit State(BpeModel m) : model(std::move(m)) {}
};

namespace {

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw_user_error(path.string(), ": cannot open the file. Give the path of a tokenizer.json or of "
                     "a model directory that holds one.");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  try {
    return nlohmann::json::parse(buffer.str());
  } catch (const nlohmann::json::exception& e) {
    throw_user_error(path.string(), ": not valid JSON (", e.what(), "). Re-download or re-save the file.");
  }
}

// bos_token / eos_token of tokenizer_config.json: a string, an AddedToken object or null.
std::optional<std::string> config_token(const nlohmann::json* config, const char* key, const JsonWhere& where) {
  if (!config) return std::nullopt;
  const auto* value = find_member(*config, key);
  if (!value || value->is_null()) return std::nullopt;
  if (value->is_string()) return value->get<std::string>();
  if (value->is_object()) return require_string(*value, "content", where.at(key));
  throw_user_error(where.at(key).str(), ": expected a string, an AddedToken object or null, found ",
                   value->type_name(), ".");
}

}  // namespace

std::filesystem::path tokenizer_json_path(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  if (std::filesystem::is_directory(path)) file = path / "tokenizer.json";
  if (!std::filesystem::exists(file))
    throw_user_error(file.string(), ": no such file. Give the path of a tokenizer.json or of a model "
                     "directory that holds one.");
  return file;
}

Tokenizer Tokenizer::load(const std::filesystem::path& path) {
  const std::filesystem::path file = tokenizer_json_path(path);
  const nlohmann::json tokenizer_json = read_json(file);
  const std::filesystem::path config_path = file.parent_path() / "tokenizer_config.json";
  std::optional<nlohmann::json> config;
  if (std::filesystem::exists(config_path)) config = read_json(config_path);
  return from_json(tokenizer_json, config ? &*config : nullptr, file.string(), config_path.string());
}

Tokenizer Tokenizer::from_json(const nlohmann::json& j, const nlohmann::json* config, const std::string& source,
                               const std::string& config_source) {
  const JsonWhere root{source, ""};
  if (!j.is_object()) throw_user_error(root.str(), ": expected a JSON object (a tokenizer.json).");

  // The model. `tokenizers` infers BPE when "type" is missing but "merges" is present.
  const auto& model_json = require_member(j, "model", root);
  std::string model_type;
  if (const auto* type = find_member(model_json, "type"); type && type->is_string()) model_type = type->get<std::string>();
  else if (find_member(model_json, "merges")) model_type = "BPE";
  if (model_type != "BPE")
    throw_user_error(root.at("model").at("type").str(), ": the model type \"", model_type,
                     "\" is not supported. Supported: BPE (byte-level or with byte_fallback); "
                     "WordPiece, Unigram and WordLevel are not.");
  auto state = std::make_shared<State>(BpeModel::from_json(model_json, root.at("model")));
  state->source = source;

  const nlohmann::json null_json;
  const auto member_or_null = [&](const char* key) -> const nlohmann::json& {
    const auto* value = find_member(j, key);
    return value ? *value : null_json;
  };
  state->normalizer = Normalizer::from_json(member_or_null("normalizer"), root.at("normalizer"));
  state->pre_tokenizer = PreTokenizer::from_json(member_or_null("pre_tokenizer"), root.at("pre_tokenizer"));
  state->decoder = Decoder::from_json(member_or_null("decoder"), root.at("decoder"));
  state->post_processor = PostProcessor::from_json(member_or_null("post_processor"), root.at("post_processor"));
  for (const char* key : {"truncation", "padding"})
    if (!member_or_null(key).is_null())
      log::warn(root.at(key).str(), ": ", key, " settings are ignored (Refinery encodes whole texts).");

  // Added tokens.
  state->added = load_added_tokens(
      member_or_null("added_tokens"), root.at("added_tokens"),
      [&](std::string_view content) { return state->model.token_to_id(content); }, state->model.vocab_size(),
      [&](const std::string& content) {
        std::string text = content;
        state->normalizer.normalize(text);
        return text;
      });
  std::vector<std::string> raw_patterns, normalized_patterns;
  std::vector<const AddedToken*> raw_tokens, normalized_tokens;
  // `tokenizers` lists special tokens before the other added tokens in its matchers.
  for (int pass = 0; pass < 2; ++pass) {
    for (const AddedToken& token : state->added) {
      if (token.special != (pass == 0)) continue;
      if (token.normalized) {
        std::string pattern = token.content;
        state->normalizer.normalize(pattern);
        normalized_patterns.push_back(std::move(pattern));
        normalized_tokens.push_back(&token);
      } else {
        raw_patterns.push_back(token.content);
        raw_tokens.push_back(&token);
      }
    }
  }
  for (const AddedToken& token : state->added) {
    state->added_by_content.emplace(token.content, token.id);
    state->added_by_id[token.id] = &token;
  }
  state->raw_matcher = AddedTokenMatcher(std::move(raw_patterns), std::move(raw_tokens));
  state->normalized_matcher = AddedTokenMatcher(std::move(normalized_patterns), std::move(normalized_tokens));

  state->vocab_size = state->model.vocab_size();
  for (const auto& [content, id] : state->added_by_content)
    if (!state->model.token_to_id(content)) ++state->vocab_size;

  if (config) {
    const JsonWhere where{config_source, ""};
    const Tokenizer probe(state);
    for (auto [key, slot] : {std::pair{"bos_token", &state->bos}, std::pair{"eos_token", &state->eos}}) {
      const auto name = config_token(config, key, where);
      if (!name) continue;
      *slot = probe.token_to_id(*name);
      if (!*slot)
        throw_user_error(where.at(key).str(), ": the token \"", *name, "\" is not in ", source,
                         ". Fix the token name or the tokenizer files.");
    }
  }
  return Tokenizer(std::move(state));
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special_tokens) const {
  const State& s = *state_;
  std::string repaired;
  if (!utf8::is_valid(input)) {
    std::size_t replaced = 0;
    repaired = utf8::to_valid_lossy(input, &replaced);
    log::warn("tokenizer: the text is not valid UTF-8; ", replaced,
              " invalid byte sequence(s) were replaced by U+FFFD before encoding");
    input = repaired;
  }

  std::vector<int32_t> ids;
  ids.reserve(input.size() / 3 + 4);
  std::vector<Segment> raw_segments, norm_segments;
  std::vector<Piece> pieces;
  s.raw_matcher.split(input, raw_segments);
  for (const Segment& raw : raw_segments) {
    if (raw.id) {
      ids.push_back(*raw.id);
      continue;
    }
    std::string text(input.substr(raw.start, raw.end - raw.start));
    s.normalizer.normalize(text);
    norm_segments.clear();
    s.normalized_matcher.split(text, norm_segments);
    for (const Segment& seg : norm_segments) {
      if (seg.id) {
        ids.push_back(*seg.id);
        continue;
      }
      pieces.clear();
      pieces.push_back({text.substr(seg.start, seg.end - seg.start), raw.start == 0 && seg.start == 0});
      s.pre_tokenizer.pre_tokenize(pieces);
      for (const Piece& piece : pieces) s.model.tokenize(piece.text, ids);
    }
  }
  if (add_special_tokens) s.post_processor.apply(ids);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const State& s = *state_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (auto it = s.added_by_id.find(id); it != s.added_by_id.end()) {
      if (skip_special_tokens && it->second->special) continue;
      tokens.push_back(it->second->text);
    } else if (const std::string* token = s.model.id_to_token(id)) {
      // A model token whose text equals a special added token is skipped too (`tokenizers` tests
      // the content against its special-token set).
      if (skip_special_tokens) {
        auto added = s.added_by_content.find(*token);
        if (added != s.added_by_content.end() && s.added_by_id.at(added->second)->special) continue;
      }
      tokens.push_back(*token);
    }
  }
  return s.decoder.decode(std::move(tokens));
}

std::optional<int32_t> Tokenizer::bos_id() const { return state_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return state_->eos; }
std::size_t Tokenizer::vocab_size() const { return state_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (auto it = state_->added_by_content.find(token); it != state_->added_by_content.end()) return it->second;
  return state_->model.token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (auto it = state_->added_by_id.find(id); it != state_->added_by_id.end()) return it->second->text;
  if (const std::string* token = state_->model.id_to_token(id)) return *token;
  throw_user_error(state_->source, ": no token has id ", id, " (vocabulary size ", vocab_size(), ").");
}

}  // namespace refinery::tokenizer
