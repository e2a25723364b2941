#include "cli/cli_util.hpp"

#include <fstream>
#include <iterator>

#include "engine/core/error.hpp"

namespace refinery::cli {

std::string read_whole_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw_user_error(path.string(), ": no such file; check the path");
  if (std::filesystem::is_directory(path, ec))
    throw_user_error(path.string(), ": is a directory, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_user_error(path.string(), ": cannot be opened for reading (permissions?)");
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace refinery::cli
