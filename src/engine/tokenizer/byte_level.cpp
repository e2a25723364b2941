#include "engine/tokenizer/byte_level.hpp"

#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer::byte_level {
namespace {

bool is_printable(unsigned b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct Tables {
  std::array<std::string, 256> to_char;
  std::array<int16_t, 0x144> to_byte;  // mapped code points are all < U+0100 + 68 = U+0144
  Tables() {
    to_byte.fill(-1);
    unsigned next = 0x100;
    for (unsigned b = 0; b < 256; ++b) {
      const char32_t cp = is_printable(b) ? b : next++;
      utf8::append(to_char[b], cp);
      to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

// Immutable after construction (a function-local static: thread-safe initialisation).
const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

const std::string& byte_to_char(unsigned char b) { return tables().to_char[b]; }

void encode_bytes(std::string_view bytes, std::string& out) {
  const auto& t = tables();
  for (unsigned char b : bytes) out += t.to_char[b];
}

std::optional<unsigned char> char_to_byte(char32_t cp) {
  if (cp >= 0x144) return std::nullopt;
  const int16_t b = tables().to_byte[cp];
  if (b < 0) return std::nullopt;
  return static_cast<unsigned char>(b);
}

}  // namespace refinery::tokenizer::byte_level
