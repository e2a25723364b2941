#include "cli/commands.hpp"
#include "engine/core/error.hpp"

namespace refinery::cli {
void register_data(CLI::App& app) {
  auto* cmd = app.add_subcommand("data", "(being written)");
  cmd->callback([] { throw_internal_error("refine data is being written"); });
}
}  // namespace refinery::cli
