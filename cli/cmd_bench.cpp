// `refine bench MODEL [--prefill-tokens N --decode-tokens N] [--device cpu|cuda] [--json]`:
// prefill and batch-1 decode speed of a model (DESIGN §6; keys prefill_tokens_per_s,
// decode_tokens_per_s, peak_memory_bytes).
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "engine/backend/backend.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/core/error.hpp"
#include "engine/eval/throughput.hpp"
#include "engine/model/transformer.hpp"

namespace refinery::cli {

void register_bench(CLI::App& app) {
  struct Options {
    std::string model, device = "cpu";
    eval::ThroughputOptions run;
    int threads = 0;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("bench", "Measure prefill and decode speed of a model");
  cmd->footer(
      "Prefill: one forward over --prefill-tokens seeded random tokens; decode: --decode-tokens\n"
      "greedy batch-1 steps through the KV cache after it. A short warm-up runs first.\n\n"
      "Example:\n"
      "  refine bench models/refinery-teacher-moe --prefill-tokens 512 --decode-tokens 64\n"
      "  refine bench teacher-w4/ --device cuda --json");
  cmd->add_option("MODEL", o->model, "Hugging Face model directory")->required();
  cmd->add_option("--prefill-tokens", o->run.prefill_tokens, "Prompt tokens of the prefill")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--decode-tokens", o->run.decode_tokens, "Decode steps timed")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--seed", o->run.seed, "Seed of the random prompt")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu or cuda")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0 = all cores)")->capture_default_str();
  cmd->add_flag("--json", o->json, "Print one JSON object to stdout");

  cmd->callback([o] {
    if (o->device != "cpu" && o->device != "cuda")
      throw_user_error("--device ", o->device, ": expected cpu or cuda");
    auto model = model::Transformer::load(o->model, o->device == "cuda"
                                                        ? backend::make_cuda_backend(0)
                                                        : backend::make_cpu_backend(o->threads));
    const auto r = eval::measure_throughput(*model, o->run);
    nlohmann::json j{{"model", o->model},
                     {"device", o->device},
                     {"prefill_tokens", r.prefill_tokens},
                     {"decode_tokens", r.decode_tokens},
                     {"prefill_tokens_per_s", r.prefill_tokens_per_s},
                     {"decode_tokens_per_s", r.decode_tokens_per_s},
                     {"peak_memory_bytes", r.peak_memory_bytes}};
    if (o->json) {
      std::cout << j.dump() << "\n";
      return;
    }
    std::cout << str("prefill  ", r.prefill_tokens, " tokens in ", r.prefill_seconds, " s: ",
                     r.prefill_tokens_per_s, " tokens/s\n")
              << str("decode   ", r.decode_tokens, " tokens in ", r.decode_seconds, " s: ",
                     r.decode_tokens_per_s, " tokens/s (batch 1)\n")
              << str("peak memory ", r.peak_memory_bytes / double(1 << 20), " MiB (",
                     o->device == "cuda" ? "device pool" : "process resident set", ")\n");
  });
}

}  // namespace refinery::cli
