#pragma once
// The evaluation's token stream from --data files (io::TextSource: .txt, .jsonl, tokens JSON,
// HDF5 token datasets): every document in order, text documents encoded by `encode`,
// pre-tokenized ones taken as they are, the ids concatenated without separators. To reproduce
// the AWQ/GPTQ WikiText-2 number, give the "\n\n"-joined test split as one .txt file, encoded
// with the tokenizer's special tokens (what `tokenizer(text)` does in transformers).

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace refinery::eval {

using TextEncoder = std::function<std::vector<int32_t>(std::string_view text)>;

struct TokenStream {
  std::vector<int32_t> tokens;
  int64_t documents = 0;
  bool has_text = false;  // some document was text (encoded), not pre-tokenized
};

// User errors from TextSource (missing files, bad lines) and for ids beyond int32.
TokenStream read_token_stream(const std::vector<std::string>& paths, const TextEncoder& encode);

// An encoder over the tokenizer of a model directory (or a tokenizer.json), loaded on first use
// so that pre-tokenized data needs no tokenizer. add_special: the tokenizer's post-processor
// (BOS) as in transformers' tokenizer(text); otherwise encode(text, add_special_tokens=False).
TextEncoder lazy_tokenizer_encoder(const std::filesystem::path& tokenizer_path, bool add_special);

}  // namespace refinery::eval
