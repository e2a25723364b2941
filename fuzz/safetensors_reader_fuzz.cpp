// Fuzz target for the safetensors parser: any input must either parse, with every tensor's bytes
// inside the input, or throw refinery::Error. Crashes, sanitizer reports, hangs and other exception
// types are bugs. Run with scripts/fuzz.sh; without clang, CTest replays the seed corpus
// fuzz/corpus/safetensors_reader_fuzz/ (valid files and the malformed files of tests/engine/io).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "engine/core/error.hpp"
#include "engine/io/safetensors_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto input = std::as_bytes(std::span<const uint8_t>(data, size));
  try {
    const auto file = refinery::io::SafetensorsFile::parse(input, "fuzz-input");
    unsigned checksum = 0;
    for (const auto& entry : file.tensors()) {
      const auto bytes = file.bytes(entry);
      // Every byte must lie inside the input (ASan checks the reads; this checks the bounds).
      if (bytes.size() != 0 && (bytes.data() < input.data() || bytes.data() + bytes.size() > input.data() + size))
        std::abort();
      for (const std::byte b : bytes) checksum += static_cast<unsigned>(b);
      if (file.find(entry.name) != &entry) std::abort();
      (void)entry.num_elements();
    }
    for (const auto& [key, value] : file.metadata()) checksum += static_cast<unsigned>(key.size() + value.size());
    volatile unsigned sink = checksum;
    (void)sink;
  } catch (const refinery::Error&) {
    // Rejected input: the expected outcome for malformed data.
  }
  return 0;
}
