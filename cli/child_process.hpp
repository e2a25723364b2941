#pragma once
// Runs `refine` itself (/proc/self/exe) as a child process: how `refine recipe` runs its steps, so
// that every step is exactly the command a user could type, and its memory (host and GPU) is
// released when it ends.

#include <filesystem>
#include <string>
#include <vector>

namespace refinery::cli {

// `args` excludes the program name. The child's stdout is written to `stdout_file` (created or
// truncated) and, when `echo_stdout`, copied to our stderr line by line with `prefix`; its stderr
// is ours (progress shows live). Returns the exit code (128 + signal when it was killed).
int run_refine_child(const std::vector<std::string>& args, const std::filesystem::path& stdout_file,
                     bool echo_stdout, const std::string& prefix = "  ");

// The command line a user would type for `args` (quoted where needed), for logs and step records.
std::string command_line(const std::vector<std::string>& args);

}  // namespace refinery::cli
