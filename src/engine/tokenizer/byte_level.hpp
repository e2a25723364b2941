#pragma once
// The GPT-2 byte <-> unicode map used by ByteLevel pre-tokenizers, normalizers and decoders:
// printable bytes ('!'..'~', 0xA1..0xAC, 0xAE..0xFF) map to the code point of the same value, the
// other 68 bytes map to U+0100, U+0101, ... in byte order. Every byte thus becomes one visible
// character and a byte string becomes a text the BPE vocabulary is written in.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace refinery::tokenizer::byte_level {

// UTF-8 of the character byte `b` maps to.
const std::string& byte_to_char(unsigned char b);

// Appends the mapped characters of every byte of `bytes` to `out`.
void encode_bytes(std::string_view bytes, std::string& out);

// The byte a mapped character stands for, or nullopt when `cp` is not in the map.
std::optional<unsigned char> char_to_byte(char32_t cp);

}  // namespace refinery::tokenizer::byte_level
