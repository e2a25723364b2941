#include "engine/io/model_directory.hpp"

#include <fstream>
#include <sstream>

#include "engine/core/error.hpp"

namespace refinery::io {

namespace fs = std::filesystem;

nlohmann::json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_user_error(path.string(), " cannot be read; check the path");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    throw_user_error(path.string(), " is not valid JSON (", e.what(), ")");
  }
}

namespace {
// Whether `inner` is `outer` or lies below it (paths compared after resolving what exists).
bool is_within(const fs::path& inner, const fs::path& outer) {
  const fs::path a = fs::weakly_canonical(inner), b = fs::weakly_canonical(outer);
  auto ai = a.begin();
  for (auto bi = b.begin(); bi != b.end(); ++bi, ++ai)
    if (ai == a.end() || *ai != *bi) return *bi == "" && ai == a.end();
  return true;
}
}  // namespace

void check_output_model_directory(const fs::path& source, const fs::path& out, bool force,
                                  std::string_view what) {
  if (out.empty()) throw_user_error("--out is empty; give the directory to write the ", what, " model to");
  if (fs::exists(out) && !fs::is_directory(out))
    throw_user_error("--out ", out.string(), " is a file, not a directory; choose another --out");
  if (fs::weakly_canonical(out) == fs::weakly_canonical(source))
    throw_user_error("--out ", out.string(), " is the input model; write the ", what,
                     " model to a separate directory");
  if (is_within(out, source) || is_within(source, out))
    throw_user_error("--out ", out.string(), " overlaps the input model ", source.string(),
                     "; write the ", what, " model to a separate directory");
  if (fs::is_directory(out) && !fs::is_empty(out) && !force)
    throw_user_error("--out ", out.string(), " exists and is not empty; choose another --out or "
                     "pass --force to replace it (it is replaced only once the new model is "
                     "complete)");
}

}  // namespace refinery::io
