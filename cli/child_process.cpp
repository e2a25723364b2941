#include "cli/child_process.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "engine/core/error.hpp"

extern char** environ;

namespace refinery::cli {

std::string command_line(const std::vector<std::string>& args) {
  std::string line = "refine";
  for (const auto& a : args) {
    const bool plain = !a.empty() && a.find_first_of(" \t\n'\"$\\*?&|;<>()`") == std::string::npos;
    line += " ";
    if (plain) {
      line += a;
    } else {
      line += "'";
      for (char c : a) line += c == '\'' ? std::string("'\\''") : std::string(1, c);
      line += "'";
    }
  }
  return line;
}

int run_refine_child(const std::vector<std::string>& args, const std::filesystem::path& stdout_file,
                     bool echo_stdout, const std::string& prefix) {
  std::ofstream out(stdout_file, std::ios::binary | std::ios::trunc);
  if (!out) throw_user_error("cannot write ", stdout_file.string(), ": check the run directory");

  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) throw_internal_error("pipe failed: ", std::strerror(errno));
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, pipe_fds[0]);
  posix_spawn_file_actions_addclose(&actions, pipe_fds[1]);

  std::vector<std::string> argv_strings{"refine"};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  pid_t pid = 0;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);
  if (rc != 0) {
    close(pipe_fds[0]);
    throw_internal_error("cannot start `", command_line(args), "`: ", std::strerror(rc));
  }

  // Copy the child's stdout to the file (and our stderr) until it closes.
  std::string pending;
  char buffer[4096];
  while (true) {
    const ssize_t n = read(pipe_fds[0], buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.write(buffer, n);
    if (!echo_stdout) continue;
    pending.append(buffer, static_cast<size_t>(n));
    size_t newline;
    while ((newline = pending.find('\n')) != std::string::npos) {
      std::fprintf(stderr, "%s%s\n", prefix.c_str(), pending.substr(0, newline).c_str());
      pending.erase(0, newline + 1);
    }
  }
  if (echo_stdout && !pending.empty()) std::fprintf(stderr, "%s%s\n", prefix.c_str(), pending.c_str());
  close(pipe_fds[0]);
  out.close();

  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) throw_internal_error("waitpid failed: ", std::strerror(errno));
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 2;
}

}  // namespace refinery::cli
