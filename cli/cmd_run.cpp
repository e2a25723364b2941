#include "cli/commands.hpp"
#include "engine/core/error.hpp"

namespace refinery::cli {
void register_run(CLI::App& app) {
  auto* cmd = app.add_subcommand("run", "(being written)");
  cmd->callback([] { throw_internal_error("refine run is being written"); });
}
}  // namespace refinery::cli
