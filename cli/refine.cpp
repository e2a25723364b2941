// `refine`: the command line over the Refinery library. Parsing, printing and exit codes live in
// cli/ only (DESIGN §1.3, §6): 0 success, 1 bad input or usage, 2 internal error.
#include <cstdio>
#include <exception>
#include <string>

#include "cli/commands.hpp"
#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/core/openmp_wait.hpp"

int main(int argc, char** argv) {
  refinery::reexec_with_passive_openmp_wait(argv);  // why: engine/core/openmp_wait.hpp
  CLI::App app{
      "refine — compress large language models (distill, prune, quantize) and measure what it cost.\n"
      "Run `refine <verb> --help` for a verb's options and an example.",
      "refine"};
  app.set_version_flag("--version", std::string("refine ") + REFINERY_VERSION);
  app.require_subcommand(1);
  bool verbose = false, quiet = false;
  app.add_flag("-v,--verbose", verbose, "Log debug details to stderr");
  app.add_flag("-q,--quiet", quiet, "Log only warnings and errors");
  app.parse_complete_callback([&] {
    if (verbose) refinery::log::set_level(refinery::log::Level::kDebug);
    if (quiet) refinery::log::set_level(refinery::log::Level::kWarn);
  });

  refinery::cli::register_all_verbs(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0 in CLI11.
    int code = app.exit(e);
    return code == 0 ? 0 : 1;
  } catch (const refinery::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.kind() == refinery::ErrorKind::kUser ? 1 : 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
