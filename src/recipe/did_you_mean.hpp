#pragma once
// " (did you mean 'x'?)" for a misspelled key: the closest candidate by edit distance, when it is
// close enough to be a plausible typo (distance <= max(2, length / 3)); "" otherwise.

#include <string>
#include <vector>

namespace refinery::recipe {

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);

// Levenshtein distance (insert, delete, substitute: cost 1 each).
int edit_distance(const std::string& a, const std::string& b);

}  // namespace refinery::recipe
