// `refine tokenize`: token ids of a text, exactly as Hugging Face's
// `encode(text, add_special_tokens=False)` gives them (DESIGN §6).
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "cli/cli_util.hpp"
#include "cli/commands.hpp"
#include "engine/core/error.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace refinery::cli {

void register_tokenize(CLI::App& app) {
  struct Options {
    std::string tokenizer_path, text, file;
    bool add_special = false, json = false;
  };
  auto options = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("tokenize", "Print the token ids of a text");
  cmd->footer(
      "Example:\n"
      "  refine tokenize --tokenizer models/demo-tiny-deepseek-v3 --text 'def f(x): return x'\n"
      "  refine tokenize --tokenizer data/tokenizers/deepseek-v3 --file notes.txt --json");
  cmd->add_option("--tokenizer", options->tokenizer_path,
                  "tokenizer.json, or a model directory that holds one")
      ->required();
  auto* text = cmd->add_option("--text", options->text, "The text to encode");
  auto* file = cmd->add_option("--file", options->file, "A file whose whole content is encoded");
  text->excludes(file);
  cmd->add_flag("--add-special", options->add_special,
                "Add BOS/EOS as the tokenizer's configuration says (like add_special_tokens=True)");
  cmd->add_flag("--json", options->json, "Print one JSON object {\"ids\": [...]}");

  cmd->callback([options, text, file] {
    if (text->count() == 0 && file->count() == 0)
      throw_user_error("refine tokenize needs --text S or --file F (see refine tokenize --help)");
    std::string input = options->text;
    if (!options->file.empty()) input = read_whole_file(options->file);
    const auto tokenizer = tokenizer::Tokenizer::load(options->tokenizer_path);
    const std::vector<int32_t> ids = tokenizer.encode(input, options->add_special);
    if (options->json) {
      std::cout << nlohmann::json{{"ids", ids}}.dump() << "\n";
    } else {
      for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
    }
  });
}

}  // namespace refinery::cli
