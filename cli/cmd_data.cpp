// `refine data tokenize`: text files -> an HDF5 token dataset (DESIGN §5), streamed document by
// document so that memory stays bounded whatever the corpus size.
#include <filesystem>
#include <iostream>

#include "cli/commands.hpp"
#include "engine/core/log.hpp"
#include "engine/core/progress.hpp"
#include "engine/core/sha256.hpp"
#include "engine/io/text_source.hpp"
#include "engine/io/token_dataset.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace refinery::cli {
namespace {

struct DataTokenizeOptions {
  std::string tokenizer_path;
  std::vector<std::string> inputs;
  std::string out;
  bool add_special = false;
  bool force = false;
};

uint64_t total_input_bytes(const std::vector<std::string>& paths) {
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& path : paths) total += std::filesystem::file_size(path, ec);
  return total;
}

void run_data_tokenize(const DataTokenizeOptions& options) {
  const std::filesystem::path out(options.out);
  if (out.has_parent_path() && !std::filesystem::is_directory(out.parent_path()))
    throw_user_error("--out ", options.out, ": the folder ", out.parent_path().string(),
                     " does not exist; create it first");
  if (std::filesystem::exists(out) && !options.force)
    throw_user_error("--out ", options.out, " already exists; pass --force to replace it, or choose "
                     "another name");
  io::TextSource source(options.inputs);  // checks every input before any work
  const auto tokenizer = tokenizer::Tokenizer::load(options.tokenizer_path);
  const std::filesystem::path tokenizer_json = tokenizer::tokenizer_json_path(options.tokenizer_path);

  io::TokenDatasetInfo info;
  info.tokenizer_sha256 = sha256_file_hex(tokenizer_json);
  info.tokenizer_path = tokenizer_json.string();
  info.vocab_size = static_cast<uint32_t>(tokenizer.vocab_size());
  for (const auto& input : options.inputs)
    info.sources.push_back(std::filesystem::path(input).filename().string());
  io::TokenDatasetWriter writer(out, info);

  Progress progress("tokenize", total_input_bytes(options.inputs), "bytes");
  std::vector<uint32_t> ids;
  while (auto document = source.next()) {
    if (document->pre_tokenized) {
      writer.add_document(document->tokens, document->origin);
      continue;
    }
    const std::vector<int32_t> encoded = tokenizer.encode(document->text, options.add_special);
    ids.assign(encoded.begin(), encoded.end());
    writer.add_document(ids, document->origin);
    progress.advance(document->text.size());
  }
  writer.finish();
  progress.finish();
  log::info("wrote ", options.out, ": ", writer.n_docs(), " documents, ", writer.n_tokens(),
            " tokens (tokenizer ", tokenizer_json.string(), ", sha256 ",
            info.tokenizer_sha256.substr(0, 12), ")");
  std::cout << options.out << "\t" << writer.n_docs() << " documents\t" << writer.n_tokens()
            << " tokens\n";
}

}  // namespace

void register_data(CLI::App& app) {
  auto* data = app.add_subcommand("data", "Prepare datasets (see `refine data tokenize --help`)");
  data->require_subcommand(1);
  auto options = std::make_shared<DataTokenizeOptions>();
  auto* tokenize = data->add_subcommand(
      "tokenize", "Tokenize text files into an HDF5 token dataset (/tokens, /doc_offsets)");
  tokenize->footer(
      "Example:\n"
      "  refine data tokenize --tokenizer models/demo-tiny-deepseek-v3 \\\n"
      "      --in data/sample/valid-sample.jsonl --out sample-tokens.h5\n"
      "Inputs: .txt (one document), .jsonl (one {\"text\": ...} per line), tokens JSON\n"
      "([[id, ...], ...]) or a token dataset .h5 (copied through).");
  tokenize->add_option("--tokenizer", options->tokenizer_path,
                       "tokenizer.json, or a model directory that holds one")
      ->required();
  tokenize->add_option("--in", options->inputs, "Input files (one or more)")->required();
  tokenize->add_option("--out", options->out, "The dataset to write (OUT.h5)")->required();
  tokenize->add_flag("--add-special", options->add_special,
                     "Add BOS/EOS to every document as the tokenizer's configuration says");
  tokenize->add_flag("--force", options->force, "Replace OUT if it exists");
  tokenize->callback([options] { run_data_tokenize(*options); });
}

}  // namespace refinery::cli
