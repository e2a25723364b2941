#include "engine/core/log.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace refinery::log {
namespace {
std::atomic<Level> g_level{Level::kInfo};
std::mutex g_write_mutex;  // keeps lines from different threads whole

const char* prefix(Level level) {
  switch (level) {
    case Level::kDebug: return "debug: ";
    case Level::kInfo: return "";
    case Level::kWarn: return "warning: ";
    case Level::kError: return "error: ";
    default: return "";
  }
}
}  // namespace

void set_level(Level level) { g_level.store(level); }
Level level() { return g_level.load(); }

void write(Level level, const std::string& message) {
  std::lock_guard<std::mutex> lock(g_write_mutex);
  std::fprintf(stderr, "%s%s\n", prefix(level), message.c_str());
  std::fflush(stderr);
}

}  // namespace refinery::log
