// `refine eval MODEL --data F [--ref MODEL | --ref-logits CACHE.h5] [--seq-len L] [--stride S]
//  [--tasks F.jsonl] [--json]`: perplexity, the comparison with a reference (llama.cpp's
// --kl-divergence statistics) and multiple-choice accuracy (src/engine/eval/).
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "engine/core/log.hpp"
#include "engine/core/progress.hpp"
#include "engine/eval/evaluator.hpp"
#include "engine/eval/multiple_choice.hpp"
#include "engine/eval/token_stream.hpp"
#include "engine/io/logit_cache.hpp"
#include "engine/io/text_source.hpp"
#include "engine/model/language_model.hpp"
#include "engine/tokenizer/tokenizer.hpp"

namespace refinery::cli {
namespace {

struct EvalCliOptions {
  std::string model;
  std::vector<std::string> data;
  std::string ref;
  std::string ref_logits;
  int64_t seq_len = 0;  // 0: the cache's, else min(2048, the model's context)
  int64_t stride = 0;   // 0: non-overlapping windows
  std::string tasks;
  std::string device = "cpu";
  bool add_special = false;
  bool json = false;
};

constexpr int64_t kDefaultSeqLen = 2048;

std::string fixed(double v, int digits = 4) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, v);
  return buffer;
}

nlohmann::json comparison_json(const eval::ComparisonResult& c) {
  nlohmann::json j;
  j["ref_perplexity"] = c.ref_perplexity;
  j["ref_perplexity_uncertainty"] = c.ref_perplexity_uncertainty;
  j["ppl_ratio"] = c.ppl_ratio;
  j["ppl_ratio_uncertainty"] = c.ppl_ratio_uncertainty;
  j["ln_ppl_ratio"] = c.ln_ppl_ratio;
  j["ln_ppl_ratio_uncertainty"] = c.ln_ppl_ratio_uncertainty;
  j["kl_mean"] = c.kl_mean;
  j["kl_mean_uncertainty"] = c.kl_mean_uncertainty;
  nlohmann::json pct = nlohmann::json::object();
  for (const auto& [key, value] : c.kl_percentiles) pct[key] = value;
  j["kl_percentiles"] = pct;
  j["top1_agreement"] = c.top1_agreement;
  j["top1_agreement_uncertainty"] = c.top1_agreement_uncertainty;
  j["rms_dp"] = c.rms_dp;
  j["rms_dp_uncertainty"] = c.rms_dp_uncertainty;
  j["mean_dp"] = c.mean_dp;
  j["mean_dp_uncertainty"] = c.mean_dp_uncertainty;
  j["max_abs_dp"] = c.max_abs_dp;
  j["ref_tail_tokens"] = c.ref_tail_tokens;
  return j;
}

void print_text(const nlohmann::json& j, const std::optional<eval::ComparisonResult>& c) {
  auto row = [](const std::string& key, const std::string& value) {
    std::cout << key << std::string(key.size() < 26 ? 26 - key.size() : 1, ' ') << value << "\n";
  };
  if (j.contains("perplexity")) {
    row("windows", str(j["windows"].get<int64_t>(), " x ", j["seq_len"].get<int64_t>(),
                       j["stride"].get<int64_t>() > 0 ? str(" tokens, stride ", j["stride"].get<int64_t>())
                                                       : std::string(" tokens, non-overlapping")));
    row("tokens scored", std::to_string(j["tokens"].get<int64_t>()));
    row("tokens/s", fixed(j["tokens_per_s"].get<double>(), 1));
    row("perplexity", fixed(j["perplexity"]) + " ± " + fixed(j["perplexity_uncertainty"]));
  }
  if (c) {
    row("ref perplexity", fixed(c->ref_perplexity) + " ± " + fixed(c->ref_perplexity_uncertainty));
    row("ppl / ref ppl", fixed(c->ppl_ratio, 6) + " ± " + fixed(c->ppl_ratio_uncertainty, 6));
    row("ln(ppl / ref ppl)", fixed(c->ln_ppl_ratio, 6) + " ± " + fixed(c->ln_ppl_ratio_uncertainty, 6));
    row("mean KL(ref || model)", fixed(c->kl_mean, 6) + " ± " + fixed(c->kl_mean_uncertainty, 6));
    for (const auto& [key, value] : c->kl_percentiles) {
      const std::string label = key == "max" ? "maximum KL" : key == "min" ? "minimum KL"
                              : key == "50"  ? "median KL" : key + "% KL";
      row("  " + label, fixed(value, 6));
    }
    row("RMS dp", fixed(100 * c->rms_dp, 3) + " ± " + fixed(100 * c->rms_dp_uncertainty, 3) + " %");
    row("same top-1", fixed(100 * c->top1_agreement, 3) + " ± " +
                          fixed(100 * c->top1_agreement_uncertainty, 3) + " %");
    if (c->ref_tail_tokens > 0)
      row("targets outside ref top-k", std::to_string(c->ref_tail_tokens));
  }
  if (j.contains("tasks")) {
    const auto& t = j["tasks"];
    row("tasks", str(t["file"].get<std::string>(), " (", t["items"].get<int64_t>(), " items)"));
    row("acc", fixed(t["acc"]) + " ± " + fixed(t["acc_stderr"]));
    row("acc_norm", fixed(t["acc_norm"]) + " ± " + fixed(t["acc_norm_stderr"]));
  }
}

void run_eval(const EvalCliOptions& o) {
  if (o.data.empty() && o.tasks.empty())
    throw_user_error("nothing to evaluate: give --data (perplexity) and/or --tasks (accuracy)");
  if ((!o.ref.empty() || !o.ref_logits.empty()) && o.data.empty())
    throw_user_error("--ref and --ref-logits compare over --data; give --data as well");
  if (!o.ref_logits.empty() && o.stride > 0)
    throw_user_error("--stride cannot be used with --ref-logits: a logit cache holds "
                     "non-overlapping windows; drop --stride or compare with --ref MODEL");
  if (o.seq_len < 0 || o.stride < 0)
    throw_user_error("--seq-len and --stride must be positive");

  // Check the inputs first: a wrong path should fail before a model loads for minutes.
  if (!o.data.empty()) io::TextSource check(o.data);
  std::optional<io::LogitCacheReader> cache;
  if (!o.ref_logits.empty()) {
    cache.emplace(o.ref_logits);
    if (!cache->is_complete())
      throw_user_error(o.ref_logits, " is a partial cache (", cache->sequences(), " of ",
                       cache->info().planned_sequences,
                       " sequences); finish it by rerunning the `refine logits` command that "
                       "made it");
    if (o.seq_len > 0 && o.seq_len != cache->info().seq_len)
      throw_user_error(o.ref_logits, " was made with --seq-len ", cache->info().seq_len,
                       " but --seq-len ", o.seq_len, " was given; use ", cache->info().seq_len,
                       " or remake the cache");
  }
  model::LanguageModelOptions model_options{o.device, 0};
  if (o.seq_len > 0) model_options.sequence_length = o.seq_len;
  auto model = model::open_language_model(o.model, model_options);
  std::unique_ptr<model::LanguageModel> ref_model;
  if (!o.ref.empty()) {
    ref_model = model::open_language_model(o.ref, model_options);
    if (ref_model->vocab_size() != model->vocab_size())
      throw_user_error("--ref ", o.ref, " has a vocabulary of ", ref_model->vocab_size(),
                       " tokens but ", o.model, " has ", model->vocab_size(),
                       "; KL divergence needs models with the same vocabulary");
  }
  if (cache && cache->info().vocab_size != model->vocab_size())
    throw_user_error(o.ref_logits, " holds distributions over ", cache->info().vocab_size,
                     " tokens but ", o.model, " has a vocabulary of ", model->vocab_size(),
                     "; compare models with the same vocabulary");

  const auto encode = eval::lazy_tokenizer_encoder(o.model, o.add_special);
  nlohmann::json j;
  j["model"] = o.model;
  std::optional<eval::ComparisonResult> comparison;
  if (!o.data.empty()) {
    int64_t seq_len = cache ? cache->info().seq_len : o.seq_len;
    if (seq_len == 0) {
      seq_len = std::min(kDefaultSeqLen, model->max_sequence_length());
      if (ref_model) seq_len = std::min(seq_len, ref_model->max_sequence_length());
    }
    const auto stream = eval::read_token_stream(o.data, encode);
    const auto n = static_cast<int64_t>(stream.tokens.size());
    const auto windows = o.stride > 0 ? eval::strided_windows(n, seq_len, o.stride)
                                      : eval::non_overlapping_windows(n, seq_len);
    if (cache && cache->sequences() != static_cast<int64_t>(windows.size()))
      throw_user_error(o.ref_logits, " holds ", cache->sequences(), " sequences but --data gives ",
                       windows.size(), " windows of ", seq_len,
                       " tokens; the cache was made from other data: pass the same --data or "
                       "remake the cache");
    std::unique_ptr<eval::ReferenceRows> reference;
    if (ref_model) {
      if (seq_len > ref_model->max_sequence_length())
        throw_user_error("--seq-len ", seq_len, " exceeds the context of --ref ", o.ref, " (",
                         ref_model->max_sequence_length(), " tokens)");
      reference = eval::reference_from_model(*ref_model, 256);
    } else if (cache) {
      reference = eval::reference_from_cache(*cache, 256);
    }
    int64_t forwarded = 0;
    for (const auto& w : windows) forwarded += w.length;
    Progress progress("eval", static_cast<uint64_t>(forwarded), "tokens");
    eval::EvalOptions options;
    options.on_window = [&](int64_t done) { progress.advance(done - progress.done()); };
    const eval::EvalResult r = eval::evaluate(*model, stream.tokens, windows, reference.get(),
                                              options);
    progress.finish();
    j["data"] = o.data;
    j["seq_len"] = seq_len;
    j["stride"] = o.stride;
    j["windows"] = r.windows;
    j["tokens"] = r.nll.count;
    j["perplexity"] = r.perplexity();
    j["perplexity_uncertainty"] = r.nll.perplexity_uncertainty();
    j["tokens_per_s"] = r.tokens_per_s();
    j["seconds"] = r.seconds;
    if (r.comparison) {
      comparison = r.comparison;
      j["reference"] = ref_model ? o.ref : o.ref_logits;
      j["reference_kind"] = ref_model ? "model"
                            : cache->info().top_k == 0
                                ? "logit cache (full)"
                                : str("logit cache (top-", cache->info().top_k, ")");
      j.update(comparison_json(*r.comparison));
    }
  }
  if (!o.tasks.empty()) {
    const auto items = eval::load_multiple_choice(o.tasks);
    eval::MultipleChoiceOptions mc;
    const auto tokenizer = tokenizer::Tokenizer::load(o.model);
    mc.prefix_token = tokenizer.bos_id() ? tokenizer.bos_id() : tokenizer.eos_id();
    const auto r = eval::evaluate_multiple_choice(*model, items, encode, mc);
    j["tasks"] = {{"file", o.tasks},          {"items", r.items},
                  {"acc", r.acc},             {"acc_stderr", r.acc_stderr},
                  {"acc_norm", r.acc_norm},   {"acc_norm_stderr", r.acc_norm_stderr},
                  {"loglikelihoods", r.loglikelihoods}};  // [items][choices], for checking
  }
  if (o.json)
    std::cout << j.dump(2) << "\n";
  else
    print_text(j, comparison);
}

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalCliOptions>();
  auto* cmd = app.add_subcommand(
      "eval", "Perplexity, KL divergence to a reference, and multiple-choice accuracy");
  cmd->footer(
      "Examples:\n"
      "  refine eval student/ --data wiki.test.raw.txt --seq-len 2048 --add-special\n"
      "  refine eval student/ --data valid.jsonl --ref teacher/ --json\n"
      "  refine eval student/ --data valid.jsonl --ref-logits teacher-top64.h5\n"
      "  refine eval student/ --tasks arc_easy.jsonl\n"
      "Perplexity: the data's tokens concatenated, cut into windows of --seq-len (remainder\n"
      "dropped), positions 1..L-1 of each scored (the AWQ/GPTQ protocol); with --stride S,\n"
      "windows every S tokens scoring only their new tokens (Hugging Face's sliding window).\n"
      "With a reference: KL(ref || model) mean and percentiles, top-1 agreement, RMS of dp and\n"
      "the perplexity ratio, defined as llama.cpp's `perplexity --kl-divergence` reports them.\n"
      "--tasks: JSONL of {\"context\", \"choices\": [...], \"answer\"}, scored as\n"
      "lm-evaluation-harness does (acc, and acc_norm by the choices' character length).");
  cmd->add_option("MODEL", o->model, "Model directory (Hugging Face layout)")->required();
  cmd->add_option("--data", o->data, "Input files: .txt, .jsonl, tokens JSON or a token dataset .h5");
  auto* ref = cmd->add_option("--ref", o->ref, "Reference model directory (same vocabulary)");
  auto* ref_logits =
      cmd->add_option("--ref-logits", o->ref_logits, "Reference logit cache from `refine logits`");
  ref->excludes(ref_logits);
  cmd->add_option("--seq-len", o->seq_len,
                  "Tokens per window (default: the cache's, else 2048 or the model's context)");
  cmd->add_option("--stride", o->stride, "Sliding windows every S tokens (default: non-overlapping)");
  cmd->add_option("--tasks", o->tasks, "Multiple-choice JSONL");
  cmd->add_option("--device", o->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_flag("--add-special", o->add_special,
                "Encode --data text with the tokenizer's special tokens (BOS), like transformers' "
                "tokenizer(text)");
  cmd->add_flag("--json", o->json, "Print one JSON object to stdout");
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace refinery::cli
