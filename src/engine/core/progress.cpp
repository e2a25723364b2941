#include "engine/core/progress.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "engine/core/log.hpp"

namespace refinery {
namespace {

std::string fixed(double value, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

std::string human_seconds(double seconds) {
  if (!std::isfinite(seconds)) return "?";
  const long s = static_cast<long>(seconds + 0.5);
  if (s < 60) return str(s, "s");
  if (s < 3600) return str(s / 60, "m", s % 60 < 10 ? "0" : "", s % 60, "s");
  return str(s / 3600, "h", (s % 3600) / 60 < 10 ? "0" : "", (s % 3600) / 60, "m");
}

}  // namespace

std::string human_count(double value) {
  const char* suffixes[] = {"", "k", "M", "G", "T"};
  int i = 0;
  while (std::fabs(value) >= 1000.0 && i < 4) {
    value /= 1000.0;
    ++i;
  }
  return i == 0 ? fixed(value, value == std::floor(value) ? 0 : 2) : fixed(value, 2) + suffixes[i];
}

std::string human_bytes(double bytes) {
  const char* suffixes[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (bytes >= 1024.0 && i < 4) {
    bytes /= 1024.0;
    ++i;
  }
  return i == 0 ? fixed(bytes, 0) + " B" : fixed(bytes, 1) + " " + suffixes[i];
}

Progress::Progress(std::string label, uint64_t total, std::string unit, double log_interval_seconds)
    : label_(std::move(label)),
      unit_(std::move(unit)),
      total_(total),
      to_terminal_(isatty(STDERR_FILENO) == 1),
      log_interval_(log_interval_seconds),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

Progress::~Progress() {
  if (!finished_) finish();
}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::advance(uint64_t amount) {
  done_ += amount;
  const auto now = std::chrono::steady_clock::now();
  const double since_print = std::chrono::duration<double>(now - last_print_).count();
  if (since_print >= (to_terminal_ ? 0.25 : log_interval_)) {
    last_print_ = now;
    print(false);
  }
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  print(true);
}

void Progress::print(bool final_line) {
  if (log::level() > log::Level::kInfo) return;
  const double elapsed = elapsed_seconds();
  const double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  std::string line = str(label_, ": ", human_count(static_cast<double>(done_)));
  if (total_ > 0 && !final_line) line += str("/", human_count(static_cast<double>(total_)));
  line += str(" ", unit_);
  if (total_ > 0 && !final_line) line += str(" (", fixed(100.0 * done_ / total_, 1), "%)");
  line += str(", ", human_count(rate), " ", unit_, "/s");
  if (final_line) {
    line += str(", ", human_seconds(elapsed));
  } else if (total_ > 0 && rate > 0 && done_ < total_) {
    line += str(", ETA ", human_seconds((total_ - done_) / rate));
  }
  if (to_terminal_) {
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final_line ? "\n" : "");
    std::fflush(stderr);
  } else {
    log::write(log::Level::kInfo, line);
  }
}

}  // namespace refinery
