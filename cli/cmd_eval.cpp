#include "cli/commands.hpp"
#include "engine/core/error.hpp"

namespace refinery::cli {
void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "(being written)");
  cmd->callback([] { throw_internal_error("refine eval is being written"); });
}
}  // namespace refinery::cli
