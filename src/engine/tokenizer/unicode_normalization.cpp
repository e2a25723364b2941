#include "engine/tokenizer/unicode_normalization.hpp"

#include <algorithm>
#include <vector>

#include "engine/tokenizer/unicode_tables.hpp"
#include "engine/tokenizer/utf8.hpp"

namespace refinery::tokenizer::unicode {

namespace {

// Hangul syllable arithmetic (Unicode §3.12): S = SBase + (L * VCount + V) * TCount + T.
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

// First code point with a decomposition / a non-zero combining class; below it the tables are
// skipped (most text).
constexpr char32_t kFirstDecomposable = 0xA0;
constexpr char32_t kFirstNonStarter = 0x300;

const DecompositionEntry* find_decomposition(char32_t cp) {
  if (cp < kFirstDecomposable) return nullptr;
  const auto entries = decomposition_entries();
  const auto it = std::lower_bound(entries.begin(), entries.end(), cp,
                                   [](const DecompositionEntry& e, char32_t c) { return e.cp < c; });
  return it != entries.end() && it->cp == cp ? &*it : nullptr;
}

// Appends the full decomposition of `cp` to `out` (recursive: a mapping's code points may
// decompose further).
void decompose(char32_t cp, bool compat, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const DecompositionEntry* entry = find_decomposition(cp);
  if (entry == nullptr || (entry->compat && !compat)) {
    out.push_back(cp);
    return;
  }
  const auto pool = decomposition_pool();
  for (std::size_t i = 0; i < entry->length; ++i) decompose(pool[entry->offset + i], compat, out);
}

// Canonical ordering: each maximal run of non-starters is stably sorted by combining class.
void canonical_order(std::vector<char32_t>& cps) {
  std::size_t i = 0;
  while (i < cps.size()) {
    if (combining_class(cps[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < cps.size() && combining_class(cps[end]) != 0) ++end;
    if (end - i > 1)
      std::stable_sort(cps.begin() + static_cast<std::ptrdiff_t>(i), cps.begin() + static_cast<std::ptrdiff_t>(end),
                       [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = end;
  }
}

// The primary composite of first + second, or 0 when there is none.
char32_t compose_pair(char32_t first, char32_t second) {
  // Hangul: L + V -> LV, LV + T -> LVT.
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount)
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 && second > kTBase &&
      second < kTBase + kTCount)
    return first + (second - kTBase);
  const auto pairs = composition_pairs();
  const auto it = std::lower_bound(pairs.begin(), pairs.end(), std::pair{first, second},
                                   [](const CompositionPair& p, const std::pair<char32_t, char32_t>& key) {
                                     return p.first != key.first ? p.first < key.first : p.second < key.second;
                                   });
  return it != pairs.end() && it->first == first && it->second == second ? it->composite : 0;
}

// Canonical composition (UAX #15 §1.3): each character C is combined with the last starter L
// before it when C is not blocked from L (no character between them has class 0 or a class >= C's)
// and L + C has a primary composite. Input is canonically ordered.
void canonical_compose(std::vector<char32_t>& cps) {
  std::size_t out = 0;
  std::ptrdiff_t starter = -1;  // index in the output part of `cps`
  for (std::size_t i = 0; i < cps.size(); ++i) {
    const char32_t c = cps[i];
    const uint8_t ccc = combining_class(c);
    if (starter >= 0) {
      const bool adjacent = static_cast<std::size_t>(starter) + 1 == out;
      const uint8_t last_ccc = adjacent ? 0 : combining_class(cps[out - 1]);
      if (adjacent || (last_ccc != 0 && last_ccc < ccc)) {
        if (const char32_t composite = compose_pair(cps[static_cast<std::size_t>(starter)], c); composite != 0) {
          cps[static_cast<std::size_t>(starter)] = composite;
          continue;
        }
      }
    }
    if (ccc == 0) starter = static_cast<std::ptrdiff_t>(out);
    cps[out++] = c;
  }
  cps.resize(out);
}

}  // namespace

std::optional<NormalizationForm> parse_normalization_form(std::string_view name) {
  if (name == "NFC") return NormalizationForm::kNFC;
  if (name == "NFD") return NormalizationForm::kNFD;
  if (name == "NFKC") return NormalizationForm::kNFKC;
  if (name == "NFKD") return NormalizationForm::kNFKD;
  return std::nullopt;
}

uint8_t combining_class(char32_t cp) {
  if (cp < kFirstNonStarter) return 0;
  const auto ranges = ccc_ranges();
  const auto it = std::upper_bound(ranges.begin(), ranges.end(), cp,
                                   [](char32_t c, const CccRange& r) { return c < r.first; });
  if (it == ranges.begin()) return 0;
  const CccRange& r = *(it - 1);
  return cp <= r.last ? r.ccc : 0;
}

std::string normalize(std::string_view text, NormalizationForm form) {
  // ASCII is invariant under every form.
  if (std::all_of(text.begin(), text.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x80; }))
    return std::string(text);
  std::string repaired;
  if (!utf8::is_valid(text)) {
    repaired = utf8::to_valid_lossy(text);
    text = repaired;
  }
  const bool compat = form == NormalizationForm::kNFKC || form == NormalizationForm::kNFKD;
  const bool compose = form == NormalizationForm::kNFC || form == NormalizationForm::kNFKC;
  std::vector<char32_t> cps;
  cps.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) decompose(utf8::decode_at(text, pos), compat, cps);
  canonical_order(cps);
  if (compose) canonical_compose(cps);
  std::string out;
  out.reserve(text.size() + text.size() / 4);
  for (const char32_t cp : cps) utf8::append(out, cp);
  return out;
}

}  // namespace refinery::tokenizer::unicode
