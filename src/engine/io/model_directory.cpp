#include "engine/io/model_directory.hpp"

#include <fstream>
#include <sstream>

#include <unistd.h>

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

fs::path absolute_directory(const fs::path& path) {
  const fs::path n = fs::absolute(path).lexically_normal();
  return n.filename().empty() ? n.parent_path() : n;
}

bool is_weight_or_config_file(const fs::path& file) {
  const std::string name = file.filename().string();
  if (name == "config.json" || name == "refinery.json") return true;
  for (const std::string ext : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                                ".pt", ".pth", ".gguf", ".h5", ".msgpack"})
    if (name.size() >= ext.size() && name.compare(name.size() - ext.size(), std::string::npos, ext) == 0)
      return true;
  return false;
}

StagedModelDirectory::StagedModelDirectory(const fs::path& target) {
  target_ = absolute_directory(target);
  fs::create_directories(target_.parent_path());
  temp_ = target_.parent_path() /
          ("." + target_.filename().string() + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(temp_, ec);  // left by a killed run of the same pid
  fs::create_directory(temp_);
}

StagedModelDirectory::~StagedModelDirectory() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(temp_, ec);
}

void StagedModelDirectory::copy_side_files(const fs::path& parent_dir) const {
  for (const fs::directory_entry& f : fs::directory_iterator(parent_dir))
    if (f.is_regular_file() && !is_weight_or_config_file(f.path()))
      fs::copy_file(f.path(), temp_ / f.path().filename(), fs::copy_options::overwrite_existing);
}

void StagedModelDirectory::commit() {
  if (fs::exists(target_)) {
    const fs::path old = target_.parent_path() /
                         ("." + target_.filename().string() + ".old-" + std::to_string(::getpid()));
    std::error_code ec;
    fs::remove_all(old, ec);
    fs::rename(target_, old);
    fs::rename(temp_, target_);
    committed_ = true;
    fs::remove_all(old, ec);
  } else {
    fs::rename(temp_, target_);
    committed_ = true;
  }
}

}  // namespace refinery::io
