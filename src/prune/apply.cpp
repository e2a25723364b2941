// Writing the pruned model directory (apply.hpp).
#include "prune/apply.hpp"

#include "engine/io/model_directory.hpp"


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

  io::StagedModelDirectory temp(out);
  io::write_file_atomically(temp.path() / "config.json", result.config.dump(2) + "\n");
  io::write_checkpoint(temp.path(), tensors);
  temp.copy_side_files(model_dir);

  nlohmann::json provenance = options.provenance.is_null() ? nlohmann::json::object() : options.provenance;
  if (!provenance.contains("pass")) provenance["pass"] = "prune";
  if (!provenance.contains("parent")) provenance["parent"] = io::absolute_directory(model_dir).string();
  provenance["parameters_before"] = result.parameters_before;
  provenance["parameters_after"] = result.parameters_after;
  provenance["plan"] = plan_to_json(plan);
  if (fs::exists(model_dir / "refinery.json"))
    provenance["parent_provenance"] = io::read_json_file(model_dir / "refinery.json");
  io::write_file_atomically(temp.path() / "refinery.json", provenance.dump(2) + "\n");

  temp.commit();  // `out` was checked to be absent, empty, or replaceable (--force)
  return result;
}

}  // namespace refinery::prune
