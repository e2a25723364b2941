#include "cli/commands.hpp"
#include "engine/core/error.hpp"

namespace refinery::cli {
void register_logits(CLI::App& app) {
  auto* cmd = app.add_subcommand("logits", "(being written)");
  cmd->callback([] { throw_internal_error("refine logits is being written"); });
}
}  // namespace refinery::cli
