#pragma once
// Small pieces every pass that writes a model directory needs (quantize, prune, distill).

#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

namespace refinery::io {

// The JSON content of `path`; a user error naming the file when it cannot be read or parsed.
nlohmann::json read_json_file(const std::filesystem::path& path);

// Refuses (user errors, before any long work) an output directory `out` for a model made from
// the model directory `source`: empty, a file, the input model itself, inside it or containing
// it, or a non-empty directory while `force` is false. `what` words the messages ("quantized",
// "pruned").
void check_output_model_directory(const std::filesystem::path& source,
                                  const std::filesystem::path& out, bool force,
                                  std::string_view what);

}  // namespace refinery::io
