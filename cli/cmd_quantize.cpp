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
#include "engine/backend/cpu/cpu_backend.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/eval/token_stream.hpp"
#include "engine/model/transformer.hpp"
#include "quantize/awq.hpp"
#include "quantize/quantized_model_writer.hpp"
#include "quantize/rtn.hpp"

namespace refinery::cli {
namespace {

namespace fs = std::filesystem;

struct QuantizeCliOptions {
  std::string model, out, method = "rtn", calib, device = "cpu", tokenizer;
  int threads = 0;
  bool add_special = false, no_clip = false, gptq = false;
  int bits = 4, group_size = 128;
  int64_t calib_tokens = 65536, seq_len = 512;
  bool symmetric = false, force = false, json = false;
};

nlohmann::json options_json(const QuantizeCliOptions& o) {
  nlohmann::json j = {{"method", o.method},       {"bits", o.bits},
                      {"group_size", o.group_size}, {"zero_point", !o.symmetric}};
  if (o.method == "awq")
    j.update({{"calib", o.calib}, {"calib_tokens", o.calib_tokens}, {"seq_len", o.seq_len},
              {"device", o.device}, {"gptq", o.gptq}});
  return j;
}

// AWQ: calibration windows from --calib, the layer-streamed search on --device, then the writer.
void run_awq(const QuantizeCliOptions& o, const quantize::GroupQuantSpec& spec,
             const fs::path& model_dir, nlohmann::json provenance) {
  if (o.calib.empty())
    throw_user_error("--method awq needs calibration data: pass --calib FILE (.txt, .jsonl, tokens "
                     "JSON or a token dataset .h5), e.g. a few hundred KB of text like the "
                     "model's training data");
  if (o.seq_len < 2 || o.calib_tokens < o.seq_len)
    throw_user_error("--calib-tokens ", o.calib_tokens, " and --seq-len ", o.seq_len,
                     ": AWQ needs at least one window (--calib-tokens >= --seq-len >= 2)");
  const fs::path tokenizer = o.tokenizer.empty() ? model_dir : fs::path(o.tokenizer);
  const std::vector<int32_t> stream =
      eval::read_token_stream({o.calib}, eval::lazy_tokenizer_encoder(tokenizer, o.add_special))
          .tokens;
  const int64_t windows =
      std::min(o.calib_tokens, static_cast<int64_t>(stream.size())) / o.seq_len;
  if (windows < 1)
    throw_user_error("--calib ", o.calib, " holds ", stream.size(), " tokens, fewer than one window "
                     "of --seq-len ", o.seq_len, "; give more calibration text or a smaller "
                     "--seq-len");
  const std::span<const int32_t> tokens(stream.data(), static_cast<std::size_t>(windows * o.seq_len));
  std::shared_ptr<backend::Backend> be = o.device == "cuda" ? backend::make_cuda_backend(0)
                                                            : backend::make_cpu_backend(o.threads);
  auto model = model::Transformer::load(model_dir, be);
  for (const int32_t id : tokens)
    if (id < 0 || id >= model->config().vocab_size)
      throw_user_error("--calib ", o.calib, " holds token id ", id, ", outside the model's "
                       "vocabulary of ", model->config().vocab_size,
                       "; tokenize it with the model's tokenizer (--tokenizer)");
  log::info("quantize: AWQ W", spec.bits, " g", spec.group_size,
            spec.zero_point ? " asymmetric" : " symmetric", o.gptq ? " + GPTQ rounding" : "",
            " of ", o.model, " on ", be->name(), ", ", windows, " calibration windows of ", o.seq_len, " tokens");
  quantize::AwqOptions options;
  options.spec = spec;
  options.clip = !o.no_clip;
  options.gptq = o.gptq;
  const quantize::AwqResult r = quantize::quantize_awq(*model, tokens, windows, options);
  provenance["awq"] = r.report();
  provenance["metrics"] = {{"quantized_linears", r.parts.quantized.size()},
                           {"unquantized_linears", r.parts.not_converted.size()},
                           {"linear_bytes_before", r.dense_bytes},
                           {"linear_bytes_after", r.packed_bytes}};
  quantize::write_quantized_model(model_dir, o.out, r.parts, spec, provenance);
  int scaled = 0;
  for (const auto& g : r.groups) scaled += g.ratio >= 0.0;
  log::info("quantize: ", r.parts.quantized.size(), " linears quantized, ",
            r.parts.not_converted.size(), " left unquantized; ", scaled, " of ", r.groups.size(),
            " scaling groups scaled (the others kept s = 1, plain RTN)");
  if (o.json)
    std::cout << nlohmann::json({{"out", o.out},
                                 {"quantized_linears", r.parts.quantized.size()},
                                 {"unquantized_linears", r.parts.not_converted.size()},
                                 {"scaled_groups", scaled}})
                     .dump()
              << "\n";
  else
    std::cout << "quantized model written to " << o.out << "\n";
}

void run_quantize(const QuantizeCliOptions& o) {
  if (o.method != "rtn" && o.method != "awq")
    throw_user_error("--method ", o.method, ": expected rtn or awq");
  if (o.gptq && o.method != "awq")
    throw_user_error("--gptq rounds AWQ's scaled weights and needs --method awq (found --method ",
                     o.method, "); add --method awq --calib FILE, or drop --gptq");
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
    run_awq(o, spec, model_dir, provenance);
    return;
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
  cmd->add_option("--tokenizer", o->tokenizer, "Tokenizer for --calib text (default: MODEL's)");
  cmd->add_flag("--add-special", o->add_special, "Encode --calib text with the tokenizer's special tokens");
  cmd->add_flag("--no-clip", o->no_clip, "AWQ without the clip search");
  cmd->add_flag("--gptq", o->gptq,
                "AWQ: round the scaled (and clipped) weights with GPTQ's error compensation "
                "(input Hessian per linear) instead of round-to-nearest; same file format; "
                "runs on the CPU whatever --device (input Hessians and Cholesky factors, "
                "O(in^3) per distinct input): minutes for small models, hours for a 7B");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--force", o->force, "Replace a non-empty --out (after the new model is complete)");
  cmd->add_flag("--json", o->json, "Print a JSON summary on stdout");
  cmd->callback([o] { run_quantize(*o); });
}

}  // namespace refinery::cli
