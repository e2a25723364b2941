#include "engine/tokenizer/decoder.hpp"

#include "engine/tokenizer/byte_level.hpp"
#include "engine/tokenizer/normalizer.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer {
namespace {
constexpr const char* kReplacementChar = "\xEF\xBF\xBD";

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<0xNN>" -> the byte (Rust's from_str_radix accepts either case).
int byte_token(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  const int hi = hex_value(token[3]), lo = hex_value(token[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::vector<char32_t> code_points(const std::string& s) {
  std::vector<char32_t> cps;
  std::size_t pos = 0;
  while (pos < s.size()) cps.push_back(utf8::decode_at(s, pos));
  return cps;
}
}  // namespace

Decoder Decoder::from_json(const nlohmann::json& spec, const JsonWhere& where) {
  Decoder decoder;
  if (!spec.is_null()) {
    decoder.has_decoder_ = true;
    decoder.add_from_json(spec, where);
  }
  return decoder;
}

void Decoder::add_from_json(const nlohmann::json& spec, const JsonWhere& where) {
  const std::string type = require_string(spec, "type", where);
  if (type == "Sequence") {
    const auto& list = require_member(spec, "decoders", where);
    if (!list.is_array()) throw_user_error(where.at("decoders").str(), ": expected a list.");
    for (std::size_t i = 0; i < list.size(); ++i) add_from_json(list[i], where.at("decoders").at(i));
  } else if (type == "ByteLevel") {
    steps_.push_back(Step{Kind::kByteLevel, {}, {}, nullptr});
  } else if (type == "Metaspace") {
    Step step;
    step.kind = Kind::kMetaspace;
    step.content = find_member(spec, "replacement") ? require_string(spec, "replacement", where)
                                                    : std::string("\xE2\x96\x81");
    if (const auto* scheme = find_member(spec, "prepend_scheme"); scheme && scheme->is_string())
      step.prefix_removed = scheme->get<std::string>() != "never";
    else
      step.prefix_removed = optional_bool(spec, "add_prefix_space", true, where);
    steps_.push_back(std::move(step));
  } else if (type == "Replace") {
    const auto& pattern = require_member(spec, "pattern", where);
    Step step;
    step.kind = Kind::kReplace;
    step.content = require_string(spec, "content", where);
    if (const auto* s = find_member(pattern, "String"); s && s->is_string()) {
      step.pattern = s->get<std::string>();
    } else if (const auto* r = find_member(pattern, "Regex"); r && r->is_string()) {
      step.regex = std::make_shared<const Regex>(r->get<std::string>(), false, where.at("pattern").str());
    } else {
      throw_user_error(where.at("pattern").str(), ": expected {\"String\": \"...\"} or {\"Regex\": \"...\"}.");
    }
    steps_.push_back(std::move(step));
  } else if (type == "ByteFallback") {
    steps_.push_back(Step{Kind::kByteFallback, {}, {}, nullptr});
  } else if (type == "Fuse") {
    steps_.push_back(Step{Kind::kFuse, {}, {}, nullptr});
  } else if (type == "Strip") {
    Step step;
    step.kind = Kind::kStrip;
    step.content = require_string(spec, "content", where);
    const auto* start = find_member(spec, "start");
    const auto* stop = find_member(spec, "stop");
    if (!start || !start->is_number_unsigned() || !stop || !stop->is_number_unsigned())
      throw_user_error(where.str(), ": Strip needs non-negative integers \"start\" and \"stop\".");
    step.start = start->get<std::size_t>();
    step.stop = stop->get<std::size_t>();
    steps_.push_back(std::move(step));
  } else {
    throw_user_error(where.at("type").str(), ": the decoder type \"", type,
                     "\" is not supported. Supported: Sequence, ByteLevel, Metaspace, Replace, "
                     "ByteFallback, Fuse, Strip.");
  }
}

void Decoder::apply(const Step& step, std::vector<std::string>& tokens) {
  switch (step.kind) {
    case Kind::kByteLevel: {
      // A token whose characters are all in the byte map becomes those bytes; any other token
      // (e.g. a special token) stays as its UTF-8. The whole result is then repaired lossily.
      std::string bytes;
      for (const std::string& token : tokens) {
        const std::size_t mark = bytes.size();
        std::size_t pos = 0;
        bool mapped = true;
        while (pos < token.size()) {
          const auto b = byte_level::char_to_byte(utf8::decode_at(token, pos));
          if (!b) {
            mapped = false;
            break;
          }
          bytes.push_back(static_cast<char>(*b));
        }
        if (!mapped) {
          bytes.resize(mark);
          bytes += token;
        }
      }
      tokens.assign(1, utf8::to_valid_lossy(bytes));
      return;
    }
    case Kind::kMetaspace:
      for (std::size_t i = 0; i < tokens.size(); ++i)
        tokens[i] = replace_all(tokens[i], step.content, i == 0 && step.prefix_removed ? "" : " ");
      return;
    case Kind::kReplace:
      for (std::string& token : tokens)
        token = step.regex ? replace_all(token, *step.regex, step.content)
                           : replace_all(token, step.pattern, step.content);
      return;
    case Kind::kByteFallback: {
      std::vector<std::string> result;
      std::string run;
      std::size_t run_length = 0;
      const auto flush = [&] {
        if (run_length == 0) return;
        if (utf8::is_valid(run)) {
          result.push_back(run);
        } else {
          for (std::size_t i = 0; i < run_length; ++i) result.emplace_back(kReplacementChar);
        }
        run.clear();
        run_length = 0;
      };
      for (std::string& token : tokens) {
        const int b = byte_token(token);
        if (b >= 0) {
          run.push_back(static_cast<char>(b));
          ++run_length;
        } else {
          flush();
          result.push_back(std::move(token));
        }
      }
      flush();
      tokens.swap(result);
      return;
    }
    case Kind::kFuse: {
      std::string joined;
      for (const std::string& token : tokens) joined += token;
      tokens.assign(1, std::move(joined));
      return;
    }
    case Kind::kStrip: {
      const std::vector<char32_t> strip = code_points(step.content);
      if (strip.size() != 1) return;  // `tokenizers` requires one char; nothing else is meaningful
      for (std::string& token : tokens) {
        const std::vector<char32_t> cps = code_points(token);
        std::size_t begin = 0;
        for (std::size_t i = 0; i < std::min(step.start, cps.size()) && cps[i] == strip[0]; ++i) begin = i + 1;
        std::size_t end = cps.size();
        for (std::size_t i = 0; i < std::min(step.stop, cps.size() - begin); ++i) {
          const std::size_t index = cps.size() - i - 1;
          if (cps[index] != strip[0]) break;
          end = index;
        }
        std::string out;
        for (std::size_t i = begin; i < end; ++i) utf8::append(out, cps[i]);
        token = std::move(out);
      }
      return;
    }
  }
}

std::string Decoder::decode(std::vector<std::string> tokens) const {
  if (!has_decoder_) {
    std::string joined;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (i) joined += ' ';
      joined += tokens[i];
    }
    return joined;
  }
  for (const Step& step : steps_) apply(step, tokens);
  std::string joined;
  for (const std::string& token : tokens) joined += token;
  return joined;
}

}  // namespace refinery::tokenizer
