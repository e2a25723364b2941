#pragma once
// Each `refine <verb>` lives in its own cmd_<verb>.cpp and registers itself on the app here.
// A registered subcommand's callback does the work; errors propagate as refinery::Error to
// refine.cpp's main, which alone prints them and picks the exit code (DESIGN §6).

#include <CLI/CLI.hpp>

namespace refinery::cli {

void register_inspect(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_data(CLI::App& app);
void register_run(CLI::App& app);
void register_logits(CLI::App& app);
void register_eval(CLI::App& app);
void register_distill(CLI::App& app);
void register_prune(CLI::App& app);
void register_quantize(CLI::App& app);
void register_bench(CLI::App& app);
void register_recipe(CLI::App& app);

// Every verb above, in the order `refine --help` lists them.
void register_all_verbs(CLI::App& app);

}  // namespace refinery::cli
