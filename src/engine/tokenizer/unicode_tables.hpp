#pragma once
// Unicode character data for normalization (UAX #15), generated into unicode_tables.cpp by
// tests/fixtures/tokenizer/make_unicode_tables.py from Python's unicodedata. Only
// unicode_normalization.cpp should need these; the layout is chosen for a compact table.

#include <cstdint>
#include <span>

namespace refinery::tokenizer::unicode {

// Unicode version of the tables (e.g. "14.0.0").
extern const char* const kUnicodeVersion;

// Code points first..last (inclusive) have canonical combining class `ccc` (non-zero). Sorted,
// disjoint; code points in no range have class 0.
struct CccRange {
  char32_t first, last;
  uint8_t ccc;
};

// One-level decomposition mapping of `cp`: decomposition_pool()[offset, offset + length). `compat`
// marks a compatibility mapping (<font>, <compat>, ... in UnicodeData.txt), used only by NFKD/NFKC.
// Sorted by cp. Hangul syllables are not listed (algorithmic).
struct DecompositionEntry {
  char32_t cp;
  uint16_t offset;
  uint8_t length;
  uint8_t compat;
};

// Canonical composition: first + second -> composite, for primary composites only (composition
// exclusions already removed). Sorted by (first, second).
struct CompositionPair {
  char32_t first, second, composite;
};

std::span<const CccRange> ccc_ranges();
std::span<const DecompositionEntry> decomposition_entries();
std::span<const char32_t> decomposition_pool();
std::span<const CompositionPair> composition_pairs();

}  // namespace refinery::tokenizer::unicode
