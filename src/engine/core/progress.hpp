#pragma once
// Progress of a long job on stderr (DESIGN §6): a self-rewriting line with rate and ETA when stderr
// is a terminal, a plain log line every `log_interval` seconds when it is not (CI logs, files).

#include <chrono>
#include <cstdint>
#include <string>

namespace refinery {

class Progress {
 public:
  // `total` may be 0 when unknown (no percentage or ETA then). `unit` names what is counted
  // ("tokens", "bytes", "layers").
  Progress(std::string label, uint64_t total, std::string unit, double log_interval_seconds = 10.0);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(uint64_t amount);  // cheap: prints at most a few times a second
  void set_total(uint64_t total) { total_ = total; }
  // Prints the final line ("label: N unit in T s (R unit/s)"); called by the destructor if not before.
  void finish();
  double elapsed_seconds() const;
  uint64_t done() const { return done_; }

 private:
  void print(bool final_line);

  std::string label_;
  std::string unit_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool to_terminal_;
  bool finished_ = false;
  double log_interval_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
};

// "12.3k", "4.56M", "7.89G" — for counts in progress and reports.
std::string human_count(double value);
// "512 B", "1.5 KiB", "8.3 MiB", "2.0 GiB".
std::string human_bytes(double bytes);

}  // namespace refinery
