// `refine logits MODEL --data F --out CACHE.h5 [--top-k K [--sample]] [--seq-len L] [--device cpu|cuda]`:
// the teacher's next-token distributions over the data's non-overlapping windows, into the
// resumable HDF5 logit cache of DESIGN §5 (src/engine/io/logit_cache.hpp).
#include <algorithm>
#include <filesystem>
#include <iostream>

#include "cli/commands.hpp"
#include "engine/backend/cuda/top_k_log_softmax.hpp"
#include "engine/core/log.hpp"
#include "engine/core/progress.hpp"
#include "engine/eval/token_stream.hpp"
#include "engine/eval/token_windows.hpp"
#include "engine/io/logit_cache.hpp"
#include "engine/io/text_source.hpp"
#include "engine/model/language_model.hpp"

namespace refinery::cli {
namespace {

struct LogitsOptions {
  std::string model;
  std::vector<std::string> data;
  std::string out;
  int64_t top_k = 64;
  int64_t seq_len = 0;  // 0: min(2048, the model's context)
  int64_t batch = 1;    // windows per forward (top-k caches)
  std::string device = "cpu";
  bool add_special = false;
  bool sample = false;   // a priority sample of top_k ids per position instead of the top k
  int64_t seed = 0;      // the sample's seed
};

constexpr int64_t kDefaultSeqLen = 2048;
constexpr int64_t kChunkRows = 256;

void run_logits(const LogitsOptions& o) {
  if (o.top_k < 0) throw_user_error("--top-k is ", o.top_k, "; use 0 (full logits) or a positive k");
  if (o.seq_len < 0) throw_user_error("--seq-len is ", o.seq_len, "; it must be positive");
  if (o.batch < 1) throw_user_error("--batch is ", o.batch, "; it must be at least 1");
  if (o.sample && o.top_k == 0)
    throw_user_error("--sample needs --top-k K > 0 (the number of sampled ids per position); "
                     "--top-k 0 stores full logits");
  if (o.seed < 0) throw_user_error("--seed is ", o.seed, "; use a number >= 0");
  const std::filesystem::path out(o.out);
  if (out.has_parent_path() && !std::filesystem::is_directory(out.parent_path()))
    throw_user_error("--out ", o.out, ": the folder ", out.parent_path().string(),
                     " does not exist; create it first");
  io::TextSource check(o.data);  // every input exists and has a known kind, before the model loads
  model::LanguageModelOptions model_options;
  model_options.device = o.device;
  model_options.sequence_length = o.seq_len > 0 ? o.seq_len : kDefaultSeqLen;
  model_options.top_k = o.top_k;
  model_options.batch = o.top_k == 0 ? 1 : o.batch;
  auto model = model::open_language_model(o.model, model_options);
  const int64_t vocab = model->vocab_size();
  if (o.top_k > vocab)
    throw_user_error("--top-k ", o.top_k, " exceeds the model's vocabulary of ", vocab,
                     " tokens; use at most ", vocab, " (or 0 for full logits)");
  const int64_t slots = o.sample ? std::min(o.top_k + 1, vocab) : o.top_k;
  if (o.device == "cuda" && slots > backend::cuda::kMaxTopK)
    throw_user_error("--top-k ", o.top_k, (o.sample ? " with --sample" : ""),
                     " is more than the GPU's fused top-k keeps (", backend::cuda::kMaxTopK,
                     (o.sample ? " slots, one of them the threshold" : ""),
                     "); use a smaller --top-k, or --top-k 0 for full logits");
  const int64_t seq_len = o.seq_len > 0 ? o.seq_len
                                        : std::min(kDefaultSeqLen, model->max_sequence_length());
  if (seq_len > model->max_sequence_length())
    throw_user_error("--seq-len ", seq_len, " exceeds the model's context of ",
                     model->max_sequence_length(), " tokens; pass a smaller --seq-len");

  const auto stream = eval::read_token_stream(
      o.data, eval::lazy_tokenizer_encoder(o.model, o.add_special));
  const auto windows =
      eval::non_overlapping_windows(static_cast<int64_t>(stream.tokens.size()), seq_len);
  const std::span<const int32_t> kept(stream.tokens.data(),
                                      static_cast<size_t>(windows.size()) * seq_len);
  for (size_t i = 0; i < kept.size(); ++i)
    if (kept[i] < 0 || kept[i] >= vocab)
      throw_user_error("token ", i, " of the data has id ", kept[i],
                       ", outside the model's vocabulary of ", vocab,
                       "; the data was tokenized for another model");

  io::LogitCacheInfo info;
  info.teacher_path = std::filesystem::absolute(o.model).string();
  info.teacher_fingerprint = io::teacher_fingerprint(o.model);
  info.top_k = o.top_k;
  info.vocab_size = vocab;
  info.seq_len = seq_len;
  info.planned_sequences = static_cast<int64_t>(windows.size());
  info.data_sha256 = io::data_fingerprint(kept);
  if (o.sample) {
    info.selection = io::kSelectionPriority;
    info.sample_seed = o.seed;
  }

  io::LogitCacheWriter writer(o.out, info);
  const int64_t start = writer.resumed_sequences();
  if (start > 0)
    log::info("resuming ", o.out, " at sequence ", start, " of ", windows.size());
  Progress progress("logits", static_cast<uint64_t>((windows.size() - start) * seq_len), "tokens");
  const size_t batch = o.top_k == 0 ? 1 : static_cast<size_t>(o.batch);
  for (size_t w = static_cast<size_t>(start); w < windows.size(); w += batch) {
    const size_t n = std::min(batch, windows.size() - w);
    if (o.top_k == 0) {
      const auto tokens = kept.subspan(w * seq_len, static_cast<size_t>(seq_len));
      writer.begin_sequence(tokens);
      model->score(
          tokens,
          [&](int64_t, const float* logits, int64_t rows) {
            writer.add_full(logits, rows);
            progress.advance(static_cast<uint64_t>(rows));
          },
          kChunkRows);
      writer.end_sequence();
      continue;
    }
    // The engine fuses the top-k into the LM head (on the GPU: never [tokens x vocab] in f32) and
    // runs the n windows in one forward; chunks arrive window by window, each committed whole.
    const auto tokens = kept.subspan(w * seq_len, n * static_cast<size_t>(seq_len));
    int64_t open_window = -1;
    backend::TopKSampling sampling;  // row key of position p of window w: w · seq_len + p
    sampling.enabled = o.sample;
    sampling.seed = static_cast<uint64_t>(o.seed);
    sampling.first_row_key = static_cast<int64_t>(w) * seq_len;
    model->score_top_k_batch(
        tokens, static_cast<int64_t>(n), o.top_k,
        [&](int64_t first, const int32_t* indices, const float* log_probs, int64_t rows) {
          const int64_t window = first / seq_len;
          if (window != open_window) {
            if (open_window >= 0) writer.end_sequence();
            open_window = window;
            writer.begin_sequence(tokens.subspan(static_cast<size_t>(window * seq_len),
                                                 static_cast<size_t>(seq_len)));
          }
          writer.add_top_k(indices, log_probs, rows);
          progress.advance(static_cast<uint64_t>(rows));
        },
        kChunkRows, sampling);
    if (open_window >= 0) writer.end_sequence();
  }
  writer.finish();
  progress.finish();
  std::cout << o.out << "\t" << windows.size() << " sequences\t" << kept.size() << " tokens\t"
            << (o.top_k == 0 ? std::string("full logits")
                : o.sample   ? str("priority sample of ", o.top_k)
                             : str("top-", o.top_k))
            << "\n";
}

}  // namespace

void register_logits(CLI::App& app) {
  auto o = std::make_shared<LogitsOptions>();
  auto* cmd = app.add_subcommand(
      "logits", "Cache a teacher's next-token distributions over a dataset (HDF5, resumable)");
  cmd->footer(
      "Example:\n"
      "  refine logits models/demo-tiny-deepseek-v3 --data data/sample/valid-sample.jsonl \\\n"
      "      --out teacher-top64.h5 --top-k 64 --seq-len 512\n"
      "The data's tokens are concatenated and cut into windows of --seq-len (the remainder is\n"
      "dropped), as `refine eval` does. Rerunning the same command after a crash resumes at the\n"
      "last complete sequence; other options or another teacher are refused.\n"
      "For offline distillation, --sample stores a priority sample of --top-k ids per position\n"
      "with unbiased estimates of the teacher's probabilities (the tail is represented, not\n"
      "lumped): the student learns the whole distribution from the same file size.");
  cmd->add_option("MODEL", o->model, "Teacher model directory (Hugging Face layout)")->required();
  cmd->add_option("--data", o->data, "Input files: .txt, .jsonl, tokens JSON or a token dataset .h5")
      ->required();
  cmd->add_option("--out", o->out, "The cache to write (CACHE.h5)")->required();
  cmd->add_option("--top-k", o->top_k, "Most likely tokens kept per position; 0 = full logits")
      ->capture_default_str();
  cmd->add_option("--seq-len", o->seq_len, "Tokens per window (default: 2048 or the model's context)");
  cmd->add_option("--batch", o->batch,
                  "Windows per forward for top-k caches (larger GEMMs; 4 suits a GPU)")
      ->capture_default_str();
  cmd->add_option("--device", o->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_flag("--sample", o->sample,
                "Store a priority sample of --top-k ids per position (unbiased probability "
                "estimates, forward-KL distillation at T = 1) instead of the k most likely");
  cmd->add_option("--seed", o->seed, "Seed of --sample")->capture_default_str();
  cmd->add_flag("--add-special", o->add_special,
                "Encode text with the tokenizer's special tokens (BOS), like transformers' "
                "tokenizer(text)");
  cmd->callback([o] { run_logits(*o); });
}

}  // namespace refinery::cli
