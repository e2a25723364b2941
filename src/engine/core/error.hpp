#pragma once
// One error type for the whole library (DESIGN §8).
//
// Library code throws refinery::Error; only cli/ catches it. The kind decides the process exit code
// (DESIGN §6): a user error (bad input or usage, exit 1) must say what was expected, what was found
// and how to fix it; an internal error (exit 2) is a bug or an environment failure (CUDA, disk).

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace refinery {

enum class ErrorKind { kUser, kInternal };

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// str("tensor ", name, " has ", n, " bytes") — stream-formats its arguments (g++ 12 has no <format>).
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

// Bad input or usage: the message names the file/tensor/field, expected vs found, and the fix.
template <typename... Args>
[[noreturn]] void throw_user_error(Args&&... args) {
  throw Error(ErrorKind::kUser, str(std::forward<Args>(args)...));
}

// A broken invariant or a failing system call: not the user's fault.
template <typename... Args>
[[noreturn]] void throw_internal_error(Args&&... args) {
  throw Error(ErrorKind::kInternal, str(std::forward<Args>(args)...));
}

// Checks an internal invariant (never user input: use throw_user_error for that).
#define REFINERY_CHECK(cond, ...)                                                               \
  do {                                                                                          \
    if (!(cond))                                                                                \
      ::refinery::throw_internal_error(__FILE__, ":", __LINE__, ": check failed: " #cond ": ", \
                                       ##__VA_ARGS__);                                          \
  } while (0)

}  // namespace refinery
