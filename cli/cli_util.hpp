#pragma once
// Small helpers shared by the cmd_*.cpp files.

#include <filesystem>
#include <string>

namespace refinery::cli {

// The whole content of a file, as bytes; a clear user error if it cannot be read.
std::string read_whole_file(const std::filesystem::path& path);

}  // namespace refinery::cli
