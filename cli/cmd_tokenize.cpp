#include "cli/commands.hpp"
#include "engine/core/error.hpp"

namespace refinery::cli {
void register_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "(being written)");
  cmd->callback([] { throw_internal_error("refine tokenize is being written"); });
}
}  // namespace refinery::cli
