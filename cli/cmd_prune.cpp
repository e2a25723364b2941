// `refine prune MODEL --calib F --out DIR [--experts N] [--expert-metric M] [--layers N]
//  [--ffn-ratio R] [--heads N] [--kv-heads N] [--hidden H] [--report scores.json] ...`: importance
// from a calibration pass, a plan, and the pruned model directory (src/prune/).
#include <filesystem>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "cli/cli_util.hpp"
#include "cli/commands.hpp"
#include "engine/io/model_directory.hpp"
#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/core/log.hpp"
#include "engine/core/progress.hpp"
#include "engine/eval/token_stream.hpp"
#include "engine/io/atomic_file.hpp"
#include "engine/io/text_source.hpp"
#include "engine/model/model_config.hpp"
#include "engine/model/transformer.hpp"
#include "prune/apply.hpp"
#include "prune/expert_subset.hpp"
#include "prune/importance.hpp"
#include "prune/plan.hpp"
#include "prune/to_dense.hpp"

namespace refinery::cli {
namespace {

namespace fs = std::filesystem;

struct PruneCliOptions {
  std::string model, out, report, scores, plan;
  std::vector<std::string> calib;
  int experts = 0, layers = 0, heads = 0, kv_heads = 0, hidden = 0, to_dense = 0;
  std::string gate_scale = "routed_mean";
  double ffn_ratio = 0.0;       // 0: not given
  std::string expert_metric = "frequency";
  uint64_t seed = 0;
  int64_t calib_tokens = 65536, seq_len = 512;
  std::string device = "cpu";
  int threads = 0;
  bool force = false, add_special = false, json = false;
  bool experts_given = false, layers_given = false, ffn_given = false;
  bool heads_given = false, kv_heads_given = false, hidden_given = false, to_dense_given = false;
};

// The calibration model and tokens, loaded once for every pass that needs them.
struct Calibration {
  std::unique_ptr<model::Transformer> model;
  std::vector<int32_t> tokens;
  prune::CalibrationOptions options;
};


Calibration load_calibration(const PruneCliOptions& o, const model::ModelConfig& config) {
  if (o.calib.empty())
    throw_user_error("importance scores need calibration data: give --calib FILE (.txt, .jsonl, "
                     "tokens JSON or a token dataset .h5), or --scores scores.json from an earlier --report");
  if (o.seq_len < 1) throw_user_error("--seq-len is ", o.seq_len, "; it must be >= 1");
  if (o.calib_tokens < 0) throw_user_error("--calib-tokens is ", o.calib_tokens, "; give 0 (all) or more");
  if (config.max_position_embeddings > 0 && o.seq_len > config.max_position_embeddings)
    throw_user_error("--seq-len ", o.seq_len, " exceeds the model's max_position_embeddings ",
                     config.max_position_embeddings);
  io::TextSource check(o.calib);  // every input exists, before the model loads
  Calibration c;
  c.tokens = eval::read_token_stream(o.calib, eval::lazy_tokenizer_encoder(o.model, o.add_special)).tokens;
  std::shared_ptr<backend::Backend> be = o.device == "cuda" ? backend::make_cuda_backend(0)
                                                            : backend::make_cpu_backend(o.threads);
  c.model = model::Transformer::load(o.model, be);
  c.options.seq_len = o.seq_len;
  c.options.max_tokens = o.calib_tokens;
  return c;
}

// Runs one pass over the calibration tokens with a progress line named `what`.
template <typename Pass>
auto with_progress(Calibration& c, const char* what, Pass pass) {
  Progress progress(what, 0, "tokens");
  prune::CalibrationOptions options = c.options;
  options.on_window = [&](int64_t done, int64_t total) {
    progress.set_total(static_cast<uint64_t>(total));
    progress.advance(static_cast<uint64_t>(done) - progress.done());
  };
  auto result = pass(options);
  progress.finish();
  return result;
}

prune::ImportanceReport calibrate(const PruneCliOptions& o, Calibration& c) {
  prune::ImportanceReport report = with_progress(c, "prune calibration", [&](const auto& options) {
    return prune::compute_importance(*c.model, c.tokens, options);
  });
  report.model = o.model;
  return report;
}

// `--to-dense K`: the dense student initialized from the MoE (src/prune/to_dense.hpp).
void run_to_dense(const PruneCliOptions& o, const model::ModelConfig& config) {
  if (o.out.empty()) throw_user_error("--to-dense writes a model: give --out DIR");
  if (o.experts_given || o.layers_given || o.ffn_given || o.heads_given || o.kv_heads_given ||
      o.hidden_given || !o.plan.empty())
    throw_user_error("--to-dense makes a dense model from the MoE as a whole; drop --experts, "
                     "--layers, --ffn-ratio, --heads, --kv-heads, --hidden and --plan (prune the "
                     "dense model afterwards if needed)");
  prune::ToDenseOptions td;
  td.routed_experts_per_layer = o.to_dense;
  td.metric = prune::parse_expert_metric(o.expert_metric);
  td.gate_scale = prune::parse_gate_scale(o.gate_scale);
  td.force = o.force;
  if (!config.is_moe())
    throw_user_error(o.model, " is a dense model (", config.model_type,
                     "); --to-dense needs an MoE (deepseek_v2/v3, mixtral, qwen2_moe, qwen3_moe)");
  if (!o.scores.empty())
    throw_user_error("--to-dense needs the routing statistics of a calibration pass: give --calib "
                     "instead of --scores");
  prune::check_output_directory(o.out, o.model, o.force);
  Calibration c = load_calibration(o, config);
  const auto report = calibrate(o, c);
  const auto stats = with_progress(c, "routing statistics", [&](const auto& options) {
    return prune::compute_routing_stats(*c.model, c.tokens, options);
  });
  td.provenance = {{"pass", "to_dense"},
                   {"created_by", "refine prune --to-dense"},
                   {"parent", o.model},
                   {"options",
                    {{"to_dense", o.to_dense},
                     {"expert_metric", o.expert_metric},
                     {"gate_scale", o.gate_scale}}},
                   {"calibration", {{"data", o.calib}, {"tokens", report.tokens}}}};
  const auto r = prune::write_dense_from_moe(o.model, report, stats, td, o.out);
  if (o.json) {
    std::cout << nlohmann::json({{"model", o.model},
                                 {"out", o.out},
                                 {"model_type", r.model_type},
                                 {"intermediate_size", r.intermediate_size},
                                 {"parameters_before", r.parameters_before},
                                 {"parameters_after", r.parameters_after}})
                     .dump()
              << "\n";
    return;
  }
  std::cout << "dense " << r.model_type << " model written to " << o.out << ": FFN width "
            << r.intermediate_size << ", " << r.parameters_after << " parameters (the MoE has "
            << r.parameters_before << ")\n";
}

void run_prune(const PruneCliOptions& o) {
  if (o.out.empty() && o.report.empty())
    throw_user_error("nothing to do: give --out DIR (write the pruned model) and/or --report "
                     "scores.json (write the importance scores)");
  prune::PruneOptions po;
  if (o.experts_given) {
    if (o.experts < 1) throw_user_error("--experts is ", o.experts, "; give the routed experts to keep per layer (>= 1)");
    po.experts = o.experts;
  }
  if (o.layers_given) {
    if (o.layers < 1) throw_user_error("--layers is ", o.layers, "; give the number of layers to keep (>= 1)");
    po.layers = o.layers;
  }
  if (o.ffn_given) po.ffn_ratio = o.ffn_ratio;
  if (o.heads_given) po.heads = o.heads;
  if (o.kv_heads_given) po.kv_heads = o.kv_heads;
  if (o.hidden_given) po.hidden = o.hidden;
  const bool exact = o.expert_metric == "exact";
  if (exact && !o.experts_given)
    throw_user_error("--expert-metric exact chooses the subset for --experts N: give --experts");
  if (!exact) po.expert_metric = prune::parse_expert_metric(o.expert_metric);
  po.seed = o.seed;
  const bool targets = po.experts || po.layers || po.ffn_ratio || po.heads || po.kv_heads || po.hidden;
  if (!o.plan.empty() && targets)
    throw_user_error("--plan gives the whole plan; drop --experts, --layers, --ffn-ratio, --heads, --kv-heads "
                     "and --hidden");
  if (!o.out.empty() && o.plan.empty() && !targets && !o.to_dense_given)
    throw_user_error("nothing to prune: give --experts N, --layers N, --ffn-ratio R, --heads N, --kv-heads N "
                     "and/or --hidden H (or --plan FILE)");
  if (!o.scores.empty() && !o.calib.empty())
    throw_user_error("give one of --scores (reuse a report) and --calib (compute the scores)");
  if (!fs::is_regular_file(fs::path(o.model) / "config.json"))
    throw_user_error(o.model, " is not a model directory (no config.json); give a Hugging Face model directory");
  const model::ModelConfig config = model::load_model_config(o.model);
  if (o.to_dense_given) return run_to_dense(o, config);
  prune::check_options(config, po);  // before a long calibration pass
  prune::ExpertSubsetOptions exact_options;
  if (exact) {
    if (!o.plan.empty()) throw_user_error("--expert-metric exact builds its plan; drop --plan");
    if (!o.scores.empty() || o.calib.empty())
      throw_user_error("--expert-metric exact needs the calibration data itself: give --calib");
    exact_options.experts = o.experts;
    exact_options.calibration.seq_len = o.seq_len;
    // The subset count, before anything loads (a user error suggests a metric when too many).
    prune::valid_expert_subsets(model::router_spec(config), o.experts, exact_options.max_subsets);
  }
  if (!o.out.empty()) prune::check_output_directory(o.out, o.model, o.force);

  std::optional<prune::PrunePlan> plan;
  if (!o.plan.empty()) {
    plan = prune::plan_from_json(io::read_json_file(o.plan), o.plan);
    prune::validate_plan(config, *plan);
  }
  std::optional<prune::ImportanceReport> report;
  std::optional<Calibration> calibration;
  if (exact) po.experts.reset();  // the plan's other targets first; the subset search below
  const bool need_scores = !o.report.empty() || (!o.out.empty() && !plan && po.needs_scores());
  if (!o.scores.empty()) {
    report = prune::report_from_json(io::read_json_file(o.scores), o.scores);
  } else if (need_scores || exact) {
    calibration.emplace(load_calibration(o, config));
    report = calibrate(o, *calibration);
  }
  if (!o.report.empty()) {
    io::write_file_atomically(o.report, prune::report_to_json(*report).dump(1) + "\n");
    log::info("prune: importance scores written to ", o.report);
  }
  nlohmann::json summary = {{"model", o.model}};
  if (!o.report.empty()) summary["report"] = o.report;
  if (!o.out.empty()) {
    if (!plan) plan = prune::build_plan(config, report ? &*report : nullptr, po);
    if (exact) {
      log::info("prune: searching the expert subset with the lowest reconstruction error per layer");
      prune::set_plan_experts(*plan, prune::choose_expert_subsets(*calibration->model,
                                                                  calibration->tokens, exact_options));
      po.experts = o.experts;
    }
    prune::ApplyOptions ao;
    ao.force = o.force;
    nlohmann::json options = {{"expert_metric", o.expert_metric}, {"seed", o.seed}};
    if (po.experts) options["experts"] = *po.experts;
    if (po.layers) options["layers"] = *po.layers;
    if (po.ffn_ratio) options["ffn_ratio"] = *po.ffn_ratio;
    if (po.heads) options["heads"] = *po.heads;
    if (po.kv_heads) options["kv_heads"] = *po.kv_heads;
    if (po.hidden) options["hidden"] = *po.hidden;
    if (!o.plan.empty()) options["plan"] = o.plan;
    ao.provenance = {{"pass", "prune"}, {"created_by", "refine prune"}, {"parent", o.model}, {"options", options}};
    if (report) {
      ao.provenance["calibration"] = {{"data", o.calib}, {"scores", o.scores}, {"tokens", report->tokens},
                                      {"seq_len", report->seq_len}};
      ao.provenance["scores_summary"] = prune::plan_summary(*report, *plan);
    }
    const prune::ApplyResult r = prune::apply_plan(o.model, *plan, o.out, ao);
    summary["out"] = o.out;
    summary["parameters_before"] = r.parameters_before;
    summary["parameters_after"] = r.parameters_after;
    summary["layers"] = plan->layers.size();
  }
  if (o.json) {
    std::cout << summary.dump() << "\n";
    return;
  }
  if (!o.report.empty()) std::cout << "importance scores written to " << o.report << "\n";
  if (!o.out.empty())
    std::cout << "pruned model written to " << o.out << ": " << summary["parameters_after"].get<int64_t>()
              << " of " << summary["parameters_before"].get<int64_t>() << " parameters kept\n";
}

}  // namespace

void register_prune(CLI::App& app) {
  auto o = std::make_shared<PruneCliOptions>();
  auto* cmd = app.add_subcommand("prune", "Structured pruning: importance scores, plans, pruned models");
  cmd->footer(
      "Examples:\n"
      "  refine prune teacher/ --calib calib.jsonl --report scores.json\n"
      "  refine prune teacher/ --scores scores.json --out pruned/ --experts 32 --expert-metric gate_norm\n"
      "  refine prune teacher/ --calib calib.jsonl --out pruned/ --layers 20 --ffn-ratio 0.5\n"
      "  refine prune llama/ --calib calib.jsonl --out narrow/ --heads 24 --kv-heads 6 --hidden 3072\n"
      "  refine prune mixtral/ --calib calib.jsonl --out mixtral-6x/ --experts 6 --expert-metric exact\n"
      "  refine prune teacher/ --calib calib.jsonl --out dense/ --to-dense 2 --expert-metric gate_norm\n"
      "Scores come from one calibration pass (--calib-tokens tokens in windows of --seq-len):\n"
      "experts by routing frequency and gate-weighted output norm, heads, MLP channels (RMS at\n"
      "down_proj's input), embedding channels and layers (1 - cos(block input, output)).\n"
      "--experts N keeps the N best routed experts of every MoE layer (with DeepSeek's grouped\n"
      "routing, N / n_group of each group, so routing groups stay valid); --layers N keeps the N\n"
      "layers that change the residual stream most; --ffn-ratio R keeps round(R x width) channels\n"
      "of every dense MLP, routed and shared expert.\n"
      "--heads N keeps N attention heads per layer by head score. With GQA every kept KV group\n"
      "keeps the same number of heads (its own best), so N must be a multiple of the kept groups;\n"
      "MHA keeps each head with its KV head; DeepSeek MLA slices q/kv_b/o_proj per head.\n"
      "--kv-heads K (GQA) keeps the K best KV groups with their query heads (then --heads N gives\n"
      "N / K heads per group). --hidden H keeps H embedding channels (Minitron): embeddings,\n"
      "lm_head, every residual norm and every linear reading or writing the residual stream are\n"
      "sliced; RMSNorm then normalizes over H channels, which changes its output: distill after.\n"
      "llama and deepseek_v2 configs need H a multiple of the kept heads (transformers checks).\n"
      "--plan FILE applies a plan JSON as is (the `plan` of a pruned model's refinery.json is\n"
      "one). The output is a Hugging Face model directory with refinery.json (pass, options,\n"
      "parent, scores summary).");
  cmd->add_option("MODEL", o->model, "Model directory (Hugging Face layout)")->required();
  cmd->add_option("--calib", o->calib, "Calibration data: .txt, .jsonl, tokens JSON or a token dataset .h5");
  cmd->add_option("--out", o->out, "Output model directory");
  cmd->add_option("--report", o->report, "Write the importance scores (JSON) here");
  cmd->add_option("--scores", o->scores, "Reuse scores from an earlier --report instead of --calib");
  cmd->add_option("--plan", o->plan, "Apply this prune plan JSON instead of --experts/--layers/--ffn-ratio/--heads/...");
  cmd->add_option("--experts", o->experts, "Routed experts to keep per MoE layer")
      ->each([o](const std::string&) { o->experts_given = true; });
  cmd->add_option("--expert-metric", o->expert_metric,
                  "frequency, gate_norm, random, or exact (the subset with the lowest layer-output "
                  "reconstruction error; few experts only)")
      ->capture_default_str();
  cmd->add_option("--to-dense", o->to_dense,
                  "Write a dense model: each FFN = shared experts + the K best routed experts "
                  "(by --expert-metric) concatenated, scaled by their gate weight")
      ->each([o](const std::string&) { o->to_dense_given = true; });
  cmd->add_option("--gate-scale", o->gate_scale,
                  "--to-dense expert scale: routed_mean (mean gate weight over routed tokens) or "
                  "expected (x routing frequency)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of --expert-metric random")->capture_default_str();
  cmd->add_option("--layers", o->layers, "Layers to keep")->each([o](const std::string&) { o->layers_given = true; });
  cmd->add_option("--ffn-ratio", o->ffn_ratio, "Fraction of MLP channels to keep, in (0, 1]")
      ->each([o](const std::string&) { o->ffn_given = true; });
  cmd->add_option("--heads", o->heads, "Attention (query) heads to keep per layer")
      ->each([o](const std::string&) { o->heads_given = true; });
  cmd->add_option("--kv-heads", o->kv_heads, "KV heads (GQA groups) to keep per layer")
      ->each([o](const std::string&) { o->kv_heads_given = true; });
  cmd->add_option("--hidden", o->hidden, "Embedding (hidden) channels to keep")
      ->each([o](const std::string&) { o->hidden_given = true; });
  cmd->add_option("--calib-tokens", o->calib_tokens, "Calibration tokens (0: all)")->capture_default_str();
  cmd->add_option("--seq-len", o->seq_len, "Tokens per calibration window")->capture_default_str();
  cmd->add_option("--device", o->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--force", o->force, "Replace a non-empty --out directory");
  cmd->add_flag("--add-special", o->add_special, "Encode --calib text with the tokenizer's special tokens");
  cmd->add_flag("--json", o->json, "Print a JSON summary on stdout");
  cmd->callback([o] { run_prune(*o); });
}

}  // namespace refinery::cli
