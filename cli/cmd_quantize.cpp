// `refine quantize MODEL --out DIR --method rtn|awq --bits 3|4|8 --group-size 32|64|128
//  [--symmetric] [--calib F] [--calib-tokens N] [--seq-len L] [--device cpu|cuda] [--force]`:
// group quantization into the AutoAWQ GEMM format (src/quantize). RTN needs no data; AWQ
// calibrates on --calib.
#include <filesystem>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "engine/core/log.hpp"
#include "engine/core/progress.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/model/model_config.hpp"
#include "engine/model/model_weights.hpp"
#include "quantize/quantized_model_writer.hpp"
#include "quantize/rtn.hpp"

namespace refinery::cli {
namespace {

namespace fs = std::filesystem;

struct QuantizeCliOptions {
  std::string model, out, method = "rtn", calib, device = "cpu";
  int bits = 4, group_size = 128;
  int64_t calib_tokens = 65536, seq_len = 512;
  bool symmetric = false, force = false, json = false;
};

nlohmann::json options_json(const QuantizeCliOptions& o) {
  nlohmann::json j = {{"method", o.method},       {"bits", o.bits},
                      {"group_size", o.group_size}, {"zero_point", !o.symmetric}};
  if (o.method == "awq")
    j.update({{"calib", o.calib}, {"calib_tokens", o.calib_tokens}, {"seq_len", o.seq_len},
              {"device", o.device}});
  return j;
}

void run_quantize(const QuantizeCliOptions& o) {
  if (o.method != "rtn" && o.method != "awq")
    throw_user_error("--method ", o.method, ": expected rtn or awq");
  quantize::GroupQuantSpec spec;
  spec.bits = o.bits;
  spec.group_size = o.group_size;
  spec.zero_point = !o.symmetric;
  if (o.bits != 3 && o.bits != 4 && o.bits != 8)
    throw_user_error("--bits ", o.bits, " is not supported; use 3, 4 or 8");
  if (o.group_size != 32 && o.group_size != 64 && o.group_size != 128)
    throw_user_error("--group-size ", o.group_size, " is not supported; use 32, 64 or 128");
  if (o.device != "cpu" && o.device != "cuda")
    throw_user_error("--device ", o.device, ": expected cpu or cuda");
  const fs::path model_dir(o.model);
  if (!fs::is_directory(model_dir))
    throw_user_error("MODEL ", o.model, " is not a directory; give a Hugging Face model directory "
                     "(config.json + *.safetensors)");
  const model::ModelConfig config = model::load_model_config(model_dir);
  if (config.quant.method != model::QuantMethod::kNone)
    throw_user_error(o.model, " is already quantized (quantization_config.quant_method \"",
                     model::quant_method_name(config.quant.method),
                     "\"); quantize the unquantized bf16/f16/f32 model instead");
  quantize::check_output_directory(model_dir, o.out, o.force);

  nlohmann::json provenance = {{"created_by", "refine quantize"},
                               {"pass", "quantize"},
                               {"parent", o.model},
                               {"options", options_json(o)}};

  if (o.method == "awq") {
    // ---- AWQ plug-in point (the lead's src/quantize/awq*.cpp): replace this throw with
    //   quantize::run_awq(...) producing QuantizedModelParts, then write_quantized_model below.
    throw_user_error("refine quantize: --method awq is not available in this build yet; use "
                     "--method rtn");
  }

  const io::Checkpoint checkpoint = io::Checkpoint::open(model_dir);
  const model::ModelWeights weights = model::ModelWeights::load(checkpoint, config);
  log::info("quantize: RTN W", spec.bits, " g", spec.group_size,
            spec.zero_point ? " asymmetric" : " symmetric", " of ", o.model);
  const quantize::RtnResult r = quantize::quantize_rtn(weights, spec);
  for (const quantize::RtnSkip& s : r.skipped)
    log::warn("quantize: ", s.prefix, " [", s.out, ", ", s.in, "] stays unquantized: ", s.reason);
  provenance["metrics"] = {{"quantized_linears", r.parts.quantized.size()},
                           {"unquantized_linears", r.skipped.size()},
                           {"linear_bytes_before", r.dense_bytes},
                           {"linear_bytes_after", r.packed_bytes}};
  quantize::write_quantized_model(model_dir, o.out, r.parts, spec, provenance);
  const uint64_t before = checkpoint.total_bytes();
  const uint64_t after = io::Checkpoint::open(o.out).total_bytes();
  log::info("quantize: ", r.parts.quantized.size(), " linears quantized, ", r.skipped.size(),
            " left unquantized; linears ", human_bytes(static_cast<double>(r.dense_bytes)), " -> ",
            human_bytes(static_cast<double>(r.packed_bytes)), "; model ",
            human_bytes(static_cast<double>(before)), " -> ", human_bytes(static_cast<double>(after)));
  nlohmann::json summary = {{"out", o.out},
                            {"quantized_linears", r.parts.quantized.size()},
                            {"unquantized_linears", r.skipped.size()},
                            {"bytes_before", before},
                            {"bytes_after", after}};
  if (o.json)
    std::cout << summary.dump() << "\n";
  else
    std::cout << "quantized model written to " << o.out << "\n";
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto o = std::make_shared<QuantizeCliOptions>();
  auto* cmd = app.add_subcommand("quantize", "Group-quantize a model (RTN or AWQ) to the AutoAWQ format");
  cmd->footer(
      "Examples:\n"
      "  refine quantize models/demo-tiny-deepseek-v3 --out demo-w4 --method rtn --bits 4 --group-size 128\n"
      "  refine quantize MODEL --out MODEL-awq --method awq --calib calib.jsonl --calib-tokens 65536\n"
      "The output is an AutoAWQ GEMM checkpoint (qweight/qzeros/scales) that refine, vLLM and\n"
      "transformers load; linears whose sizes the group size does not divide stay bf16 (reported).");
  cmd->add_option("MODEL", o->model, "Hugging Face model directory to quantize")->required();
  cmd->add_option("--out", o->out, "Output directory (must be new or empty, unless --force)")->required();
  cmd->add_option("--method", o->method, "rtn (round to nearest) or awq (activation-aware)")
      ->capture_default_str();
  cmd->add_option("--bits", o->bits, "Bits per weight: 3, 4 or 8")->capture_default_str();
  cmd->add_option("--group-size", o->group_size, "Inputs per scale: 32, 64 or 128")->capture_default_str();
  cmd->add_flag("--symmetric", o->symmetric, "Symmetric quantization (default: zero point)");
  cmd->add_option("--calib", o->calib, "AWQ calibration text (.txt, .jsonl, tokens JSON, .h5)");
  cmd->add_option("--calib-tokens", o->calib_tokens, "AWQ calibration tokens")->capture_default_str();
  cmd->add_option("--seq-len", o->seq_len, "AWQ calibration window length")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu or cuda (AWQ calibration)")->capture_default_str();
  cmd->add_flag("--force", o->force, "Replace a non-empty --out (after the new model is complete)");
  cmd->add_flag("--json", o->json, "Print a JSON summary on stdout");
  cmd->callback([o] { run_quantize(*o); });
}

}  // namespace refinery::cli
