// Writing the pruned model directory (apply.hpp).
#include "prune/apply.hpp"

#include "engine/io/model_directory.hpp"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include "engine/core/error.hpp"
#include "engine/core/log.hpp"
#include "engine/io/atomic_file.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_writer.hpp"
#include "engine/model/model_config.hpp"
#include "prune/pruned_config.hpp"
#include "prune/tensor_map.hpp"

namespace refinery::prune {

namespace fs = std::filesystem;

namespace {

// The directory a path names, absolute, without a trailing separator.
fs::path normalized(const fs::path& p) {
  fs::path n = fs::absolute(p).lexically_normal();
  return n.filename().empty() ? n.parent_path() : n;
}

// Files of the parent that describe the weights we rewrite (or are weights in another format).
bool is_weight_or_config(const fs::path& f) {
  const std::string name = f.filename().string();
  if (name == "config.json" || name == "refinery.json") return true;
  for (const char* ext : {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt",
                          ".pth", ".gguf", ".h5", ".msgpack"})
    if (name.size() >= std::string(ext).size() &&
        name.compare(name.size() - std::string(ext).size(), std::string::npos, ext) == 0)
      return true;
  return false;
}

// Removes the temporary directory unless released (an exception leaves `out` untouched).
class TempDir {
 public:
  explicit TempDir(fs::path path) : path_(std::move(path)) {
    std::error_code ec;
    fs::remove_all(path_, ec);
    fs::create_directories(path_);
  }
  ~TempDir() {
    if (!released_) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  void release() { released_ = true; }

 private:
  fs::path path_;
  bool released_ = false;
};

}  // namespace

void check_output_directory(const fs::path& out, const fs::path& model_dir, bool force) {
  io::check_output_model_directory(model_dir, out, force, "pruned");
}

ApplyResult apply_plan(const fs::path& model_dir, const PrunePlan& plan, const fs::path& out,
                       const ApplyOptions& options) {
  check_output_directory(out, model_dir, options.force);
  const fs::path config_path = model_dir / "config.json";
  const nlohmann::json parent_json = io::read_json_file(config_path);
  const model::ModelConfig config = model::parse_model_config(parent_json, config_path.string());
  validate_plan(config, plan);
  const io::Checkpoint checkpoint = io::Checkpoint::open(model_dir);
  const TensorMap map = map_tensors(checkpoint, config, plan);

  ApplyResult result;
  result.dropped_mtp_layers = map.dropped_mtp_layers;
  if (map.dropped_mtp_layers > 0)
    log::warn(model_dir.string(), ": its ", map.dropped_mtp_layers, " multi-token-prediction layer(s) are "
              "not carried over (transformers does not use them); num_nextn_predict_layers is set to 0");
  for (const std::string& name : checkpoint.names())
    result.parameters_before += static_cast<int64_t>(checkpoint.at(name).entry->num_elements());

  std::vector<io::TensorToWrite> tensors;
  for (const TensorAction& a : map.actions) {
    const io::TensorEntry& e = *checkpoint.at(a.source).entry;
    const std::span<const std::byte> src = checkpoint.bytes(a.source);
    io::TensorToWrite t;
    t.name = a.target;
    t.dtype = e.dtype;
    t.shape = a.shape;
    if (a.is_copy()) {
      t.data = src;
    } else {
      REFINERY_CHECK(dtype_bits(e.dtype) % 8 == 0, "slicing sub-byte tensor ", a.source);
      const std::size_t elem = dtype_bits(e.dtype) / 8;
      const std::vector<int64_t> shape = e.shape;
      const std::vector<TensorPiece> pieces = a.pieces;
      t.fill = [src, shape, elem, pieces](std::span<std::byte> dst) {
        std::size_t off = 0;
        for (const TensorPiece& p : pieces) off += gather_piece(src.data(), shape, elem, p, dst.data() + off);
        REFINERY_CHECK(off == dst.size(), "pruned tensor filled ", off, " of ", dst.size(), " bytes");
      };
    }
    int64_t n = 1;
    for (int64_t d : a.shape) n *= d;
    result.parameters_after += n;
    tensors.push_back(std::move(t));
  }
  result.tensors_written = static_cast<int64_t>(tensors.size());
  result.config = pruned_config(parent_json, config, plan);

  const fs::path target = normalized(out);
  fs::create_directories(target.parent_path());
  TempDir temp(target.parent_path() / str(".", target.filename().string(), ".tmp-", ::getpid()));
  io::write_file_atomically(temp.path() / "config.json", result.config.dump(2) + "\n");
  io::write_checkpoint(temp.path(), tensors);
  for (const fs::directory_entry& f : fs::directory_iterator(model_dir))
    if (f.is_regular_file() && !is_weight_or_config(f.path()))
      fs::copy_file(f.path(), temp.path() / f.path().filename());

  nlohmann::json provenance = options.provenance.is_null() ? nlohmann::json::object() : options.provenance;
  if (!provenance.contains("pass")) provenance["pass"] = "prune";
  if (!provenance.contains("parent")) provenance["parent"] = normalized(model_dir).string();
  provenance["parameters_before"] = result.parameters_before;
  provenance["parameters_after"] = result.parameters_after;
  provenance["plan"] = plan_to_json(plan);
  if (fs::exists(model_dir / "refinery.json"))
    provenance["parent_provenance"] = io::read_json_file(model_dir / "refinery.json");
  io::write_file_atomically(temp.path() / "refinery.json", provenance.dump(2) + "\n");

  // The swap: `out` was checked to be absent, empty, or replaceable (--force).
  if (fs::exists(target)) fs::remove_all(target);
  fs::rename(temp.path(), target);
  temp.release();
  return result;
}

}  // namespace refinery::prune
