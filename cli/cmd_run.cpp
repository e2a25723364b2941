// `refine run MODEL --prompt S`: generate a continuation on the CPU reference engine (DESIGN §6).
// The continuation goes to stdout as it is produced; timing stats go to stderr.
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "engine/backend/backend.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/core/error.hpp"
#include "engine/model/generate.hpp"
#include "engine/model/transformer.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace refinery::cli {

namespace {

// EOS ids from generation_config.json (an id or a list), else the tokenizer's EOS.
std::vector<int32_t> stop_ids(const std::filesystem::path& model_dir,
                              const tokenizer::Tokenizer& tok) {
  std::vector<int32_t> ids;
  std::ifstream in(model_dir / "generation_config.json");
  if (in) {
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("eos_token_id")) {
      const auto& e = j["eos_token_id"];
      if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
      if (e.is_array())
        for (const auto& v : e)
          if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
    }
  }
  if (ids.empty() && tok.eos_id()) ids.push_back(*tok.eos_id());
  return ids;
}

}  // namespace

void register_run(CLI::App& app) {
  struct Options {
    std::string model, prompt, device = "cpu";
    int64_t max_new = 64;
    double temperature = 0.0, top_p = 1.0;
    uint64_t seed = 0;
    int threads = 0;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("run", "Generate a continuation of a prompt");
  cmd->footer(
      "Greedy unless --temperature > 0. The continuation is printed to stdout; prefill and decode\n"
      "speed go to stderr.\n\n"
      "Example:\n"
      "  refine run models/demo-tiny-deepseek-v3 --prompt 'The capital of France is' --max-new 32\n"
      "  refine run models/demo-tiny-deepseek-v3 --prompt 'Once upon a time' --temperature 0.8 "
      "--top-p 0.95 --seed 7");
  cmd->add_option("MODEL", o->model,
                  "Hugging Face model directory (config.json, *.safetensors, tokenizer.json)")
      ->required();
  cmd->add_option("--prompt", o->prompt, "The text to continue")->required();
  cmd->add_option("--max-new", o->max_new, "Most new tokens to generate (stops earlier at EOS)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "Sampling temperature; 0 = greedy")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "Nucleus sampling mass in (0, 1]")
      ->check(CLI::Range(1e-9, 1.0))
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Random seed for sampling")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0 = all cores)")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu or cuda")->capture_default_str();

  cmd->callback([o] {
    if (o->device != "cpu" && o->device != "cuda")
      throw_user_error("--device ", o->device, ": expected cpu or cuda");
    const std::filesystem::path dir = o->model;
    const auto tok = tokenizer::Tokenizer::load(dir);
    auto model = model::Transformer::load(dir, o->device == "cuda"
                                                   ? backend::make_cuda_backend(0)
                                                   : backend::make_cpu_backend(o->threads));
    const std::vector<int32_t> prompt = tok.encode(o->prompt, /*add_special_tokens=*/true);
    if (prompt.empty()) throw_user_error("--prompt encodes to no tokens; give a non-empty prompt");

    model::GenerationOptions g;
    g.max_new_tokens = o->max_new;
    g.temperature = o->temperature;
    g.top_p = o->top_p;
    g.seed = o->seed;
    g.stop_ids = stop_ids(dir, tok);

    // Stream: decode the whole continuation each time and print what is new, so multi-token
    // UTF-8 characters come out whole.
    std::vector<int32_t> produced;
    std::string printed;
    const auto result = model::generate(*model, prompt, g, [&](int32_t id) {
      if (std::find(g.stop_ids.begin(), g.stop_ids.end(), id) != g.stop_ids.end()) return;
      produced.push_back(id);
      const std::string text = tok.decode(produced, /*skip_special_tokens=*/true);
      if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
        std::cout << text.substr(printed.size()) << std::flush;
        printed = text;
      }
    });
    std::cout << "\n";
    const double decode_tokens = static_cast<double>(result.tokens.size()) - 1.0;
    std::cerr << str("prefill: ", result.prompt_tokens, " tokens in ", result.prefill_seconds,
                     " s (", result.prompt_tokens / std::max(result.prefill_seconds, 1e-9),
                     " tokens/s); decode: ", static_cast<int64_t>(std::max(decode_tokens, 0.0)),
                     " tokens in ", result.decode_seconds, " s (",
                     decode_tokens > 0 ? decode_tokens / std::max(result.decode_seconds, 1e-9)
                                       : 0.0,
                     " tokens/s)", result.stopped ? "; stopped at EOS" : "")
              << "\n";
  });
}

}  // namespace refinery::cli
