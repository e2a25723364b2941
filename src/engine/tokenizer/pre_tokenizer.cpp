#include "engine/tokenizer/pre_tokenizer.hpp"

#include <algorithm>

#include "engine/tokenizer/byte_level.hpp"
#include "engine/tokenizer/normalizer.hpp"

namespace refinery::tokenizer {
namespace {

// The GPT-2 pattern the ByteLevel pre-tokenizer uses when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

PreTokenizer::Behavior parse_behavior(const nlohmann::json& spec, const JsonWhere& where) {
  const std::string name = require_string(spec, "behavior", where);
  using B = PreTokenizer::Behavior;
  if (name == "Removed") return B::kRemoved;
  if (name == "Isolated") return B::kIsolated;
  if (name == "MergedWithPrevious") return B::kMergedWithPrevious;
  if (name == "MergedWithNext") return B::kMergedWithNext;
  if (name == "Contiguous") return B::kContiguous;
  throw_user_error(where.at("behavior").str(), ": unknown split behavior \"", name,
                   "\". Expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous.");
}

}  // namespace

void split_by_matches(const std::string& text, bool at_start,
                      const std::vector<std::pair<std::size_t, std::size_t>>& matches,
                      PreTokenizer::Behavior behavior, bool invert, std::vector<Piece>& out) {
  // 1. Cover the text with (range, is_match) parts, like `tokenizers`' Pattern::find_matches.
  struct Part {
    std::size_t start, end;
    bool is_match;
  };
  std::vector<Part> parts;
  parts.reserve(matches.size() * 2 + 1);
  std::size_t prev = 0;
  for (const auto& [start, end] : matches) {
    if (prev != start) parts.push_back({prev, start, invert});
    parts.push_back({start, end, !invert});
    prev = end;
  }
  if (prev != text.size()) parts.push_back({prev, text.size(), invert});

  // 2. Combine the parts per behavior into (range, remove) splits.
  using B = PreTokenizer::Behavior;
  struct Split {
    std::size_t start, end;
    bool remove;
  };
  std::vector<Split> splits;
  splits.reserve(parts.size());
  bool previous_match = false;
  switch (behavior) {
    case B::kIsolated:
      for (const Part& p : parts) splits.push_back({p.start, p.end, false});
      break;
    case B::kRemoved:
      for (const Part& p : parts) splits.push_back({p.start, p.end, p.is_match});
      break;
    case B::kContiguous:
      for (const Part& p : parts) {
        if (p.is_match == previous_match && !splits.empty()) splits.back().end = p.end;
        else splits.push_back({p.start, p.end, false});
        previous_match = p.is_match;
      }
      break;
    case B::kMergedWithPrevious:
      for (const Part& p : parts) {
        if (p.is_match && !previous_match && !splits.empty()) splits.back().end = p.end;
        else splits.push_back({p.start, p.end, false});
        previous_match = p.is_match;
      }
      break;
    case B::kMergedWithNext:
      // Walk backwards: a match joins the part after it.
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !splits.empty()) splits.back().start = it->start;
        else splits.push_back({it->start, it->end, false});
        previous_match = it->is_match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
  }

  // 3. Emit the kept, non-empty splits.
  bool first = true;
  for (const Split& s : splits) {
    if (s.remove || s.end == s.start) {
      first = false;
      continue;
    }
    out.push_back({text.substr(s.start, s.end - s.start), at_start && first && s.start == 0});
    first = false;
  }
}

PreTokenizer PreTokenizer::from_json(const nlohmann::json& spec, const JsonWhere& where) {
  PreTokenizer pre_tokenizer;
  if (!spec.is_null()) pre_tokenizer.add_from_json(spec, where);
  return pre_tokenizer;
}

bool PreTokenizer::has_byte_level() const {
  for (const Step& step : steps_)
    if (step.kind == Kind::kByteLevel) return true;
  return false;
}

void PreTokenizer::add_from_json(const nlohmann::json& spec, const JsonWhere& where) {
  const std::string type = require_string(spec, "type", where);
  if (type == "Sequence") {
    const auto& list = require_member(spec, "pretokenizers", where);
    if (!list.is_array()) throw_user_error(where.at("pretokenizers").str(), ": expected a list.");
    for (std::size_t i = 0; i < list.size(); ++i)
      add_from_json(list[i], where.at("pretokenizers").at(i));
  } else if (type == "Split") {
    const auto& pattern = require_member(spec, "pattern", where);
    Step step;
    step.kind = Kind::kSplit;
    const JsonWhere at = where.at("pattern");
    if (const auto* s = find_member(pattern, "String"); s && s->is_string()) {
      step.regex = std::make_shared<const Regex>(s->get<std::string>(), true, at.str());
    } else if (const auto* r = find_member(pattern, "Regex"); r && r->is_string()) {
      step.regex = std::make_shared<const Regex>(r->get<std::string>(), false, at.str());
    } else {
      throw_user_error(at.str(), ": expected {\"String\": \"...\"} or {\"Regex\": \"...\"}, found ",
                       pattern.dump(), ".");
    }
    step.behavior = parse_behavior(spec, where);
    step.invert = optional_bool(spec, "invert", false, where);
    steps_.push_back(std::move(step));
  } else if (type == "ByteLevel") {
    Step step;
    step.kind = Kind::kByteLevel;
    step.add_prefix_space = optional_bool(spec, "add_prefix_space", true, where);
    if (optional_bool(spec, "use_regex", true, where))
      step.regex = std::make_shared<const Regex>(kGpt2Pattern, false, where.str());
    steps_.push_back(std::move(step));
  } else if (type == "Metaspace") {
    Step step;
    step.kind = Kind::kMetaspace;
    step.replacement = find_member(spec, "replacement") ? require_string(spec, "replacement", where)
                                                        : std::string("\xE2\x96\x81");
    if (const auto* scheme = find_member(spec, "prepend_scheme"); scheme && !scheme->is_null()) {
      const std::string name = scheme->is_string() ? scheme->get<std::string>() : "";
      if (name == "always") step.prepend = Prepend::kAlways;
      else if (name == "first") step.prepend = Prepend::kFirst;
      else if (name == "never") step.prepend = Prepend::kNever;
      else
        throw_user_error(where.at("prepend_scheme").str(), ": expected \"always\", \"first\" or "
                         "\"never\", found ", scheme->dump(), ".");
    } else {
      // Files written before prepend_scheme existed carry add_prefix_space.
      step.prepend = optional_bool(spec, "add_prefix_space", true, where) ? Prepend::kAlways : Prepend::kNever;
    }
    step.split = optional_bool(spec, "split", true, where);
    step.regex = std::make_shared<const Regex>(step.replacement, true, where.at("replacement").str());
    steps_.push_back(std::move(step));
  } else if (type == "Digits") {
    Step step;
    step.kind = Kind::kSplit;
    step.regex = std::make_shared<const Regex>(R"(\p{N})", false, where.str());
    step.behavior = optional_bool(spec, "individual_digits", false, where) ? Behavior::kIsolated
                                                                           : Behavior::kContiguous;
    steps_.push_back(std::move(step));
  } else if (type == "Whitespace") {
    Step step;
    step.kind = Kind::kSplit;
    step.regex = std::make_shared<const Regex>(R"(\w+|[^\w\s]+)", false, where.str());
    step.behavior = Behavior::kRemoved;
    step.invert = true;
    steps_.push_back(std::move(step));
  } else if (type == "WhitespaceSplit") {
    Step step;
    step.kind = Kind::kSplit;
    step.regex = std::make_shared<const Regex>(R"(\s)", false, where.str());
    step.behavior = Behavior::kRemoved;
    steps_.push_back(std::move(step));
  } else {
    throw_user_error(where.at("type").str(), ": the pre-tokenizer type \"", type,
                     "\" is not supported. Supported: Sequence, Split, ByteLevel, Metaspace, Digits, "
                     "Whitespace, WhitespaceSplit.");
  }
}

void PreTokenizer::apply(const Step& step, const Piece& piece, std::vector<Piece>& out) const {
  std::vector<std::pair<std::size_t, std::size_t>> matches;
  switch (step.kind) {
    case Kind::kSplit:
      step.regex->find_all(piece.text, matches);
      if (matches.empty() && !step.invert) {
        out.push_back(piece);  // nothing to cut (Removed/Isolated keep the whole gap)
        return;
      }
      split_by_matches(piece.text, piece.at_start, matches, step.behavior, step.invert, out);
      return;
    case Kind::kByteLevel: {
      std::string text = piece.text;
      if (step.add_prefix_space && (text.empty() || text[0] != ' ')) text = " " + text;
      std::vector<Piece> words;
      if (step.regex) {
        step.regex->find_all(text, matches);
        split_by_matches(text, piece.at_start, matches, Behavior::kIsolated, false, words);
      } else if (!text.empty()) {
        words.push_back({std::move(text), piece.at_start});
      }
      for (Piece& word : words) {
        std::string mapped;
        byte_level::encode_bytes(word.text, mapped);
        out.push_back({std::move(mapped), word.at_start});
      }
      return;
    }
    case Kind::kMetaspace: {
      std::string text = piece.text.find(' ') == std::string::npos
                             ? piece.text
                             : replace_all(piece.text, std::string(" "), step.replacement);
      const bool starts = text.compare(0, step.replacement.size(), step.replacement) == 0;
      if (!starts && (step.prepend == Prepend::kAlways || (step.prepend == Prepend::kFirst && piece.at_start)))
        text = step.replacement + text;
      if (!step.split) {
        if (!text.empty()) out.push_back({std::move(text), piece.at_start});
        return;
      }
      step.regex->find_all(text, matches);
      split_by_matches(text, piece.at_start, matches, Behavior::kMergedWithNext, false, out);
      return;
    }
  }
}

void PreTokenizer::pre_tokenize(std::vector<Piece>& pieces) const {
  std::vector<Piece> next;
  for (const Step& step : steps_) {
    next.clear();
    next.reserve(pieces.size() * 2);
    for (const Piece& piece : pieces) apply(step, piece, next);
    pieces.swap(next);
  }
}

}  // namespace refinery::tokenizer
