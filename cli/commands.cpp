// register_all_verbs: one list of the verbs, used by main and by `refine recipe` (which parses each
// step's options with the same parser before anything runs).
#include "cli/commands.hpp"

namespace refinery::cli {

void register_all_verbs(CLI::App& app) {
  register_inspect(app);
  register_tokenize(app);
  register_data(app);
  register_run(app);
  register_logits(app);
  register_eval(app);
  register_distill(app);
  register_prune(app);
  register_quantize(app);
  register_bench(app);
  register_recipe(app);
}

}  // namespace refinery::cli
