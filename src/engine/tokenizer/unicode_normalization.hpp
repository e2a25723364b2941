#pragma once
// Unicode normalization forms NFC, NFD, NFKC and NFKD (UAX #15): full (recursive) canonical or
// compatibility decomposition, Hangul syllables decomposed and composed algorithmically, canonical
// ordering of combining marks, and canonical composition with the blocking rule. The character
// data is unicode_tables.cpp (Unicode version: kUnicodeVersion, from Python's unicodedata), so the
// results equal Python's unicodedata.normalize of that version.
//
// Hugging Face `tokenizers` applies these forms for the normalizers {"type": "NFC"} etc. (Qwen2 and
// later use NFC). It uses the Rust crate unicode-normalization-alignments, whose tables may be of
// an older Unicode version: the forms differ only for code points whose decomposition or
// combining class was assigned in between (none of the common scripts).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace refinery::tokenizer::unicode {

enum class NormalizationForm { kNFC, kNFD, kNFKC, kNFKD };

// "NFC", "NFD", "NFKC", "NFKD" -> the form; anything else -> nullopt.
std::optional<NormalizationForm> parse_normalization_form(std::string_view name);

// `text` in the normalization form `form`. Invalid UTF-8 in `text` is first repaired (each
// maximal invalid subsequence becomes U+FFFD), so the result is always valid UTF-8.
std::string normalize(std::string_view text, NormalizationForm form);

// Canonical combining class of `cp` (0 for starters and unassigned code points).
uint8_t combining_class(char32_t cp);

}  // namespace refinery::tokenizer::unicode
