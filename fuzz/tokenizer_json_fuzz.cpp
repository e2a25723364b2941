// Fuzz target for the tokenizer.json loader: any bytes that are JSON must either load through
// Tokenizer::from_json or throw refinery::Error (a user error naming the JSON path). A tokenizer
// that loads must encode and decode any text, including invalid UTF-8, and decode any ids without
// crashing. Other exception types, crashes, sanitizer reports and hangs are bugs. Bytes that are
// not JSON are skipped (nlohmann::json's job). Run with `scripts/fuzz.sh 60 tokenizer_json_fuzz`;
// without clang, CTest replays the hand-made seeds in fuzz/corpus/tokenizer_json_fuzz/.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace {

constexpr std::string_view kTexts[] = {
    "",
    "Hello world, don't stop!  \n\n\tx",
    "e\xCC\x81 \xEA\xB0\x81 \xE1\x84\x80\xE1\x85\xA1 \xEF\xAC\x81 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x98\x80",
    "\xFF\xFE invalid \xC0\xAF \xED\xA0\x80 \xF0\x9F\x98",
    "<s> </s> <unk> <|endoftext|> <|im_start|>user<|im_end|>",
    "   ",
};

unsigned exercise(const refinery::tokenizer::Tokenizer& tok, std::string_view text) {
  unsigned checksum = 0;
  for (const bool special : {false, true}) {
    const std::vector<int32_t> ids = tok.encode(text, special);
    for (const int32_t id : ids) checksum += static_cast<unsigned>(id);
    checksum += static_cast<unsigned>(tok.decode(ids, false).size() + tok.decode(ids, true).size());
  }
  return checksum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The invalid-UTF-8 warning would flood the fuzzer output.
  static const bool quiet = (refinery::log::set_level(refinery::log::Level::kError), true);
  (void)quiet;
  nlohmann::json spec;
  try {
    spec = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  try {
    const auto tok = refinery::tokenizer::Tokenizer::from_json(spec, nullptr, "fuzz-tokenizer.json");
    unsigned checksum = 0;
    for (const std::string_view text : kTexts) checksum += exercise(tok, text);
    // The input bytes themselves as text (arbitrary, often invalid UTF-8).
    checksum += exercise(tok, std::string_view(reinterpret_cast<const char*>(data), size < 512 ? size : 512));
    // Any ids, known or not.
    const std::vector<int32_t> ids = {0, 1, 2, 3, -1, 255, 1000, 2147483647, -2147483647 - 1};
    checksum += static_cast<unsigned>(tok.decode(ids, false).size() + tok.decode(ids, true).size());
    checksum += static_cast<unsigned>(tok.vocab_size());
    if (tok.bos_id()) checksum += static_cast<unsigned>(*tok.bos_id());
    if (const auto id = tok.token_to_id("a")) checksum += static_cast<unsigned>(tok.id_to_token(*id).size());
    volatile unsigned sink = checksum;
    (void)sink;
  } catch (const refinery::Error&) {
    // Rejected tokenizer (or an unknown id in id_to_token): the expected outcome for bad data.
  }
  return 0;
}
