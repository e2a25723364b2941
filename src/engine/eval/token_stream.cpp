#include "engine/eval/token_stream.hpp"

#include <limits>
#include <memory>

#include "engine/core/error.hpp"
#include "engine/io/text_source.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace refinery::eval {

TokenStream read_token_stream(const std::vector<std::string>& paths, const TextEncoder& encode) {
  io::TextSource source(paths);
  TokenStream stream;
  while (auto document = source.next()) {
    ++stream.documents;
    if (document->pre_tokenized) {
      for (uint32_t id : document->tokens) {
        if (id > static_cast<uint32_t>(std::numeric_limits<int32_t>::max()))
          throw_user_error(document->origin, ": token id ", id, " is beyond int32");
        stream.tokens.push_back(static_cast<int32_t>(id));
      }
    } else {
      stream.has_text = true;
      const std::vector<int32_t> ids = encode(document->text);
      stream.tokens.insert(stream.tokens.end(), ids.begin(), ids.end());
    }
  }
  return stream;
}

TextEncoder lazy_tokenizer_encoder(const std::filesystem::path& tokenizer_path, bool add_special) {
  auto tokenizer = std::make_shared<std::unique_ptr<tokenizer::Tokenizer>>();
  return [tokenizer, tokenizer_path, add_special](std::string_view text) {
    if (!*tokenizer)
      *tokenizer = std::make_unique<tokenizer::Tokenizer>(tokenizer::Tokenizer::load(tokenizer_path));
    return (*tokenizer)->encode(text, add_special);
  };
}

}  // namespace refinery::eval
