#pragma once
// The logger: the only global mutable state (DESIGN §8). Everything goes to stderr so that stdout
// stays clean for `--json` output and token ids.

#include <string>

#include "engine/core/error.hpp"

namespace refinery::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kQuiet = 4 };

void set_level(Level level);
Level level();
void write(Level level, const std::string& message);

template <typename... Args>
void debug(Args&&... args) {
  if (level() <= Level::kDebug) write(Level::kDebug, str(std::forward<Args>(args)...));
}
template <typename... Args>
void info(Args&&... args) {
  if (level() <= Level::kInfo) write(Level::kInfo, str(std::forward<Args>(args)...));
}
template <typename... Args>
void warn(Args&&... args) {
  if (level() <= Level::kWarn) write(Level::kWarn, str(std::forward<Args>(args)...));
}

}  // namespace refinery::log
