#include "engine/tokenizer/post_processor.hpp"

namespace refinery::tokenizer {
namespace {
// ["[CLS]", 101] -> 101
int32_t token_pair_id(const nlohmann::json& spec, const char* key, const JsonWhere& where) {
  const auto& pair = require_member(spec, key, where);
  if (!pair.is_array() || pair.size() != 2 || !pair[1].is_number_integer())
    throw_user_error(where.at(key).str(), ": expected [\"token\", id], found ", pair.dump(), ".");
  return pair[1].get<int32_t>();
}
}  // namespace

PostProcessor PostProcessor::from_json(const nlohmann::json& spec, const JsonWhere& where) {
  PostProcessor processor;
  if (!spec.is_null()) processor.add_from_json(spec, where);
  return processor;
}

void PostProcessor::add_from_json(const nlohmann::json& spec, const JsonWhere& where) {
  const std::string type = require_string(spec, "type", where);
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    const auto& list = require_member(spec, "processors", where);
    if (!list.is_array()) throw_user_error(where.at("processors").str(), ": expected a list.");
    for (std::size_t i = 0; i < list.size(); ++i) add_from_json(list[i], where.at("processors").at(i));
    return;
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    // Applied after earlier processors: the new specials wrap what is there.
    prefix_.insert(prefix_.begin(), token_pair_id(spec, "cls", where));
    suffix_.push_back(token_pair_id(spec, "sep", where));
    return;
  }
  if (type != "TemplateProcessing")
    throw_user_error(where.at("type").str(), ": the post-processor type \"", type,
                     "\" is not supported. Supported: TemplateProcessing, ByteLevel, BertProcessing, "
                     "RobertaProcessing, Sequence.");
  const auto& single = require_member(spec, "single", where);
  const auto& specials = require_member(spec, "special_tokens", where);
  if (!single.is_array()) throw_user_error(where.at("single").str(), ": expected a list of pieces.");
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  for (std::size_t i = 0; i < single.size(); ++i) {
    const JsonWhere at = where.at("single").at(i);
    if (const auto* seq = find_member(single[i], "Sequence")) {
      (void)seq;
      seen_sequence = true;
      continue;
    }
    const auto* special = find_member(single[i], "SpecialToken");
    if (!special)
      throw_user_error(at.str(), ": expected {\"SpecialToken\": ...} or {\"Sequence\": ...}, found ",
                       single[i].dump(), ".");
    const std::string name = require_string(*special, "id", at.at("SpecialToken"));
    const auto* entry = find_member(specials, name.c_str());
    if (!entry)
      throw_user_error(where.at("special_tokens").str(), ": the special token \"", name,
                       "\" used by the template is not defined here.");
    const auto& ids = require_member(*entry, "ids", where.at("special_tokens").at(name));
    if (!ids.is_array()) throw_user_error(where.at("special_tokens").at(name).at("ids").str(), ": expected a list of ids.");
    for (const auto& id : ids) {
      if (!id.is_number_integer())
        throw_user_error(where.at("special_tokens").at(name).at("ids").str(), ": expected integer ids.");
      (seen_sequence ? after : before).push_back(id.get<int32_t>());
    }
  }
  prefix_.insert(prefix_.begin(), before.begin(), before.end());
  suffix_.insert(suffix_.end(), after.begin(), after.end());
}

void PostProcessor::apply(std::vector<int32_t>& ids) const {
  if (!prefix_.empty()) ids.insert(ids.begin(), prefix_.begin(), prefix_.end());
  ids.insert(ids.end(), suffix_.begin(), suffix_.end());
}

}  // namespace refinery::tokenizer
