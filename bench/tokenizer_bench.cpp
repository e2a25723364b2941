// tokenizer_bench TOKENIZER_PATH TEXT_FILE [--repeat N] [--lines]
// Encodes the whole file (one string, or line by line with --lines) on one thread, N times, and
// prints the median throughput in MB/s and tokens/s, then the same as one JSON line.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/core/error.hpp"
#include "engine/tokenizer/tokenizer.hpp"

int main(int argc, char** argv) {
  using namespace refinery;
  if (argc < 3) {
    std::fprintf(stderr, "usage: tokenizer_bench TOKENIZER_PATH TEXT_FILE [--repeat N] [--lines]\n");
    return 1;
  }
  int repeat = 5;
  bool lines = false;
  for (int i = 3; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--repeat" && i + 1 < argc) repeat = std::max(1, std::atoi(argv[++i]));
    else if (arg == "--lines") lines = true;
    else {
      std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
      return 1;
    }
  }
  try {
    const auto load_start = std::chrono::steady_clock::now();
    const auto tok = tokenizer::Tokenizer::load(argv[1]);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
    std::ifstream in(argv[2], std::ios::binary);
    if (!in) throw_user_error(argv[2], ": cannot open the text file.");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    const std::string text = buffer.str();
    std::vector<std::string> parts;
    if (lines) {
      std::istringstream stream(text);
      for (std::string line; std::getline(stream, line);) parts.push_back(line + "\n");
    } else {
      parts.push_back(text);
    }
    std::vector<double> seconds;
    std::size_t tokens = 0;
    for (int r = 0; r < repeat; ++r) {
      // Each repeat uses a fresh copy so the word cache starts cold, like a new process would.
      const auto fresh = tokenizer::Tokenizer::load(argv[1]);
      const auto start = std::chrono::steady_clock::now();
      std::size_t count = 0;
      for (const std::string& part : parts) count += fresh.encode(part).size();
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      tokens = count;
    }
    std::sort(seconds.begin(), seconds.end());
    const double median = seconds[seconds.size() / 2];
    const double mb_s = static_cast<double>(text.size()) / 1e6 / median;
    const double tok_s = static_cast<double>(tokens) / median;
    std::printf("%s on %s (%zu bytes, %s): %zu tokens, median of %d: %.3f s, %.2f MB/s, %.0f tokens/s (load %.2f s)\n",
                argv[1], argv[2], text.size(), lines ? "line by line" : "one string", tokens, repeat, median,
                mb_s, tok_s, load_s);
    std::printf("{\"tokenizer\":\"%s\",\"file\":\"%s\",\"bytes\":%zu,\"mode\":\"%s\",\"tokens\":%zu,\"repeat\":%d,"
                "\"median_s\":%.6f,\"mb_per_s\":%.3f,\"tokens_per_s\":%.1f,\"load_s\":%.3f}\n",
                argv[1], argv[2], text.size(), lines ? "lines" : "whole", tokens, repeat, median, mb_s, tok_s, load_s);
    (void)tok;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.kind() == ErrorKind::kUser ? 1 : 2;
  }
  return 0;
}
