#include "cli/commands.hpp"
#include "engine/core/error.hpp"

namespace refinery::cli {
void register_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "(being written)");
  cmd->callback([] { throw_internal_error("refine inspect is being written"); });
}
}  // namespace refinery::cli
