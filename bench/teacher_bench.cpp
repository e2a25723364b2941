// teacher_bench MODEL [--device cuda|cpu] [--batch B] [--seq L] [--mode logits|topk|decode] [--batched]
//               [--top-k K] [--out CACHE.h5] [--prompt P] [--new N] [--iters I]
//
// The teacher engine's throughput on random token ids (uniform over the vocabulary, seed 0), the
// quantities issue 4 compares with ../shared/peers/hf_peer.py:
//   logits  prefill of B sequences of L tokens to logits on the device (the LM head in chunks of
//           1024 rows, f32, not copied to the host), like the peer's `prefill` (model(ids).logits);
//           one sequence per forward, or with --batched all B in one forward_hidden_batch;
//   topk    the same through `refine logits`' path: the fused LM head + log-softmax + top-k,
//           written to an HDF5 logit cache by the background writer (a fresh file per timed
//           batch: tok_s); also tok_s_without_writer (nothing written), tok_s_streamed (one
//           file for --iters batches in a row), writer_seconds_per_batch (the writer alone, 20
//           batches of rows already on the host) and tok_s_long_run (tokens per batch over the
//           slower of the device part and the writer: what a long `refine logits` run tends to);
//   decode  batch-1 greedy generation: P prompt tokens, then N new ones (tokens/s counts the N new
//           tokens over the whole time, prefill included, like the peer's `decode`).
// Prints one JSON line: tokens/s (median of --iters timed runs after one warm-up), MFU against
// 989 TFLOP/s (H100 SXM dense bf16) counting 2 x active parameters per token, and attention.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_backend.hpp"
#include "engine/core/error.hpp"
#include "engine/io/logit_cache.hpp"
#include "engine/model/generate.hpp"
#include "engine/model/language_model.hpp"
#include "engine/model/parameter_count.hpp"
#include "engine/model/transformer.hpp"

namespace {

using namespace refinery;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string model, device = "cuda", mode = "logits", out;
  int64_t batch = 4, seq = 2048, top_k = 64, prompt = 128, fresh = 128;
  int iters = 3;
  bool batched = false;  // --batched: the whole batch in one forward
};

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = pick(rng);
  return ids;
}

// Attention FLOPs of a causal prefill of L tokens (q·k and p·v over the visible keys).
double attention_flops(const model::ModelConfig& c, int64_t seq) {
  const auto& a = c.attention;
  const double dk = a.kind == model::AttentionKind::kMla ? a.qk_nope_head_dim + a.qk_rope_head_dim
                                                         : a.head_dim;
  const double dv = a.kind == model::AttentionKind::kMla ? a.v_head_dim : a.head_dim;
  return 2.0 * a.num_heads * (dk + dv) * (seq * (seq + 1) / 2.0) * c.num_layers;
}

std::shared_ptr<backend::Backend> make_backend(const std::string& device) {
  return device == "cuda" ? backend::make_cuda_backend(0) : backend::make_cpu_backend(0);
}

// One timed unit of work per mode; returns tokens processed.
int64_t run_logits(model::Transformer& m, const Options& o, uint64_t seed) {
  backend::Backend& be = m.backend();
  const int64_t vocab = m.config().vocab_size;
  if (o.batched) {  // all sequences in one forward (forward_hidden_batch)
    std::vector<int32_t> ids;
    for (int64_t b = 0; b < o.batch; ++b) {
      const auto seq = random_ids(o.seq, vocab, seed + b);
      ids.insert(ids.end(), seq.begin(), seq.end());
    }
    model::KvCache cache = m.make_cache(o.batch * o.seq);
    const Tensor hidden = m.forward_hidden_batch(ids, o.batch, cache);
    const int64_t rows = o.batch * o.seq;
    for (int64_t r0 = 0; r0 < rows; r0 += 1024) m.logits(hidden.slice(r0, std::min(rows, r0 + 1024)));
    be.download(hidden.slice(0, 1));
    return rows;
  }
  for (int64_t b = 0; b < o.batch; ++b) {
    const auto ids = random_ids(o.seq, vocab, seed + b);
    model::KvCache cache = m.make_cache(o.seq);
    const Tensor hidden = m.forward_hidden(ids, cache);
    for (int64_t r0 = 0; r0 < o.seq; r0 += 1024) m.logits(hidden.slice(r0, std::min(o.seq, r0 + 1024)));
    be.download(hidden.slice(0, 1));  // waits for the device
  }
  return o.batch * o.seq;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    for (std::size_t i = 0; i < args.size(); ++i) {
      auto value = [&]() -> std::string {
        if (i + 1 >= args.size()) throw_user_error(args[i], " needs a value");
        return args[++i];
      };
      if (args[i] == "--device") o.device = value();
      else if (args[i] == "--batch") o.batch = std::stoll(value());
      else if (args[i] == "--seq") o.seq = std::stoll(value());
      else if (args[i] == "--mode") o.mode = value();
      else if (args[i] == "--top-k") o.top_k = std::stoll(value());
      else if (args[i] == "--out") o.out = value();
      else if (args[i] == "--prompt") o.prompt = std::stoll(value());
      else if (args[i] == "--new") o.fresh = std::stoll(value());
      else if (args[i] == "--iters") o.iters = std::max(1, std::stoi(value()));
      else if (args[i] == "--batched") o.batched = true;
      else if (o.model.empty() && args[i][0] != '-') o.model = args[i];
      else throw_user_error("unknown argument ", args[i]);
    }
    if (o.model.empty()) throw_user_error("usage: teacher_bench MODEL [options] (see the source)");

    const auto load_start = Clock::now();
    auto model = model::Transformer::load(o.model, make_backend(o.device));
    const model::ModelConfig& config = model->config();
    const int64_t vocab = config.vocab_size;
    const model::ParameterCounts params = model::count_parameters(config);
    // Weights reach the device on first use: the warm-up run below includes that copy.
    std::vector<double> times;
    int64_t tokens = 0;
    double load_seconds = seconds_since(load_start);
    std::string extra;  // mode-specific fields of the JSON line

    if (o.mode == "logits") {
      const auto warm = Clock::now();
      run_logits(*model, o, 1000);
      load_seconds += seconds_since(warm);
      model->backend().profile_reset();  // REFINERY_PROFILE=1: the timed runs only
      for (int i = 0; i < o.iters; ++i) {
        const auto start = Clock::now();
        tokens = run_logits(*model, o, 100 * i);
        times.push_back(seconds_since(start));
      }
    } else if (o.mode == "topk") {
      if (o.out.empty()) throw_user_error("--mode topk needs --out CACHE.h5");
      model.reset();
      auto lm = model::open_language_model(o.model, {o.device, 0});
      // The cache description of `planned` sequences of these tokens.
      const auto cache_info = [&](int64_t planned, std::span<const int32_t> tokens) {
        io::LogitCacheInfo info;
        info.teacher_path = o.model;
        info.teacher_fingerprint = "bench";
        info.top_k = o.top_k;
        info.vocab_size = vocab;
        info.seq_len = o.seq;
        info.planned_sequences = planned;
        info.data_sha256 = io::data_fingerprint(tokens);
        return info;
      };
      // Scores o.batch windows of `all` into `writer` as `refine logits --batch` does: windows
      // scored together (--batched) or one by one, each committed as a whole sequence.
      const auto write_top_k = [&](io::LogitCacheWriter& writer, std::span<const int32_t> all) {
        const int64_t group = o.batched ? o.batch : 1;
        for (int64_t b0 = 0; b0 < o.batch; b0 += group) {
          const std::span<const int32_t> ids =
              all.subspan(static_cast<std::size_t>(b0 * o.seq), static_cast<std::size_t>(group * o.seq));
          int64_t open = -1;
          lm->score_top_k_batch(
              ids, group, o.top_k,
              [&](int64_t first, const int32_t* idx, const float* lp, int64_t rows) {
                if (first / o.seq != open) {
                  if (open >= 0) writer.end_sequence();
                  open = first / o.seq;
                  writer.begin_sequence(ids.subspan(static_cast<std::size_t>(open * o.seq),
                                                    static_cast<std::size_t>(o.seq)));
                }
                writer.add_top_k(idx, lp, rows);
              },
              o.seq);
          writer.end_sequence();
        }
      };
      const auto warm = Clock::now();
      const auto warm_ids = random_ids(o.seq, vocab, 999);
      lm->score_top_k(warm_ids, o.top_k, [](int64_t, const int32_t*, const float*, int64_t) {});
      load_seconds += seconds_since(warm);
      for (int i = 0; i < o.iters; ++i) {
        std::filesystem::remove(o.out);
        std::vector<int32_t> all;
        for (int64_t b = 0; b < o.batch; ++b) {
          const auto ids = random_ids(o.seq, vocab, 100 * i + b);
          all.insert(all.end(), ids.begin(), ids.end());
        }
        const io::LogitCacheInfo info = cache_info(o.batch, all);
        const auto start = Clock::now();
        io::LogitCacheWriter writer(o.out, info);
        write_top_k(writer, all);
        writer.finish();
        times.push_back(seconds_since(start));
        tokens = o.batch * o.seq;
      }
      // Where the top-k path's time goes: (a) the same scoring with a consumer that keeps nothing
      // (fused LM head + top-k on the device and the download, no writer); (b) one writer for
      // --iters batches in a row, as a long `refine logits` run writes (the background writer
      // overlaps the next batch's forward; file creation and the final flush are paid once).
      const int64_t group = o.batched ? o.batch : 1;
      std::vector<double> bare;
      std::vector<int32_t> kept_ids;  // (c): the last batch's rows, for the writer alone
      std::vector<float> kept_log_probs;
      for (int i = 0; i < o.iters; ++i) {
        const auto ids = random_ids(o.batch * o.seq, vocab, 500 + i);
        const bool keep = i + 1 == o.iters;
        kept_ids.clear();
        kept_log_probs.clear();
        const auto start = Clock::now();
        for (int64_t b0 = 0; b0 < o.batch; b0 += group)
          lm->score_top_k_batch(
              std::span<const int32_t>(ids.data() + b0 * o.seq,
                                       static_cast<std::size_t>(group * o.seq)),
              group, o.top_k,
              [&](int64_t, const int32_t* idx, const float* lp, int64_t rows) {
                if (!keep) return;
                kept_ids.insert(kept_ids.end(), idx, idx + rows * o.top_k);
                kept_log_probs.insert(kept_log_probs.end(), lp, lp + rows * o.top_k);
              },
              o.seq);
        bare.push_back(seconds_since(start));
      }
      // (c) The writer alone: the kept batch written `writer_batches` times into one file (rows
      // already on the host, no GPU work), timed from creation to finish. A long `refine logits`
      // run is bounded by the slower of the device part (a) and this, per batch:
      // tok_s_long_run = tokens per batch / max(a, c).
      const int writer_batches = 20;
      double writer_per_batch = 0.0;
      {
        std::filesystem::remove(o.out);
        std::vector<int32_t> all;
        const auto ids = random_ids(o.batch * o.seq, vocab, 500 + o.iters - 1);
        for (int i = 0; i < writer_batches; ++i) all.insert(all.end(), ids.begin(), ids.end());
        REFINERY_CHECK(kept_ids.size() == static_cast<std::size_t>(o.batch * o.seq * o.top_k),
                       "teacher_bench: the scoring returned ", kept_ids.size() / o.top_k,
                       " rows, expected ", o.batch * o.seq);
        const io::LogitCacheInfo info = cache_info(o.batch * writer_batches, all);
        const auto start = Clock::now();
        io::LogitCacheWriter writer(o.out, info);
        for (int i = 0; i < writer_batches; ++i)
          for (int64_t w = 0; w < o.batch; ++w) {
            writer.begin_sequence(std::span<const int32_t>(ids.data() + w * o.seq,
                                                           static_cast<std::size_t>(o.seq)));
            const std::size_t at = static_cast<std::size_t>(w * o.seq * o.top_k);
            writer.add_top_k(kept_ids.data() + at, kept_log_probs.data() + at, o.seq);
            writer.end_sequence();
          }
        writer.finish();
        writer_per_batch = seconds_since(start) / writer_batches;
      }
      {
        std::filesystem::remove(o.out);
        std::vector<std::vector<int32_t>> runs;
        std::vector<int32_t> all;
        for (int i = 0; i < o.iters; ++i) {
          runs.push_back(random_ids(o.batch * o.seq, vocab, 700 + i));
          all.insert(all.end(), runs.back().begin(), runs.back().end());
        }
        const io::LogitCacheInfo info = cache_info(o.batch * o.iters, all);
        const auto start = Clock::now();
        io::LogitCacheWriter writer(o.out, info);
        for (const auto& ids : runs) write_top_k(writer, ids);
        writer.finish();
        const double streamed = seconds_since(start);
        const double per_batch = std::max(median(bare), writer_per_batch);
        extra = str(", \"tok_s_without_writer\": ", double(o.batch * o.seq) / median(bare),
                    ", \"tok_s_streamed\": ", double(o.batch * o.seq * o.iters) / streamed,
                    ", \"streamed_batches\": ", o.iters,
                    ", \"writer_seconds_per_batch\": ", writer_per_batch,
                    ", \"tok_s_long_run\": ", double(o.batch * o.seq) / per_batch);
      }
    } else if (o.mode == "decode") {
      model::GenerationOptions g;
      g.max_new_tokens = o.fresh;
      const auto prompt = random_ids(o.prompt, vocab, 7);
      const auto warm = Clock::now();
      model::generate(*model, prompt, g);
      load_seconds += seconds_since(warm);
      for (int i = 0; i < o.iters; ++i) {
        const auto start = Clock::now();
        const auto result = model::generate(*model, prompt, g);
        times.push_back(seconds_since(start));
        tokens = static_cast<int64_t>(result.tokens.size());
      }
    } else {
      throw_user_error("--mode must be logits, topk or decode, found ", o.mode);
    }

    const double t = median(times);
    const double tok_s = static_cast<double>(tokens) / t;
    const double flops_per_token = 2.0 * static_cast<double>(params.active_excluding_embedding());
    std::string json = str(
        "{\"model\": \"", o.model, "\", \"device\": \"", o.device, "\", \"mode\": \"", o.mode,
        "\", \"batched\": ", o.batched ? "true" : "false", ", \"batch\": ", o.batch, ", \"seq\": ", o.seq, ", \"tokens\": ", tokens,
        ", \"seconds\": ", t, ", \"tok_s\": ", tok_s, ", \"active_params\": ", params.active(),
        ", \"total_params\": ", params.total(),
        ", \"mfu_vs_989\": ", tok_s * flops_per_token / 989e12,
        ", \"attention_tflop_per_seq\": ", attention_flops(config, o.seq) / 1e12,
        ", \"warmup_and_load_seconds\": ", load_seconds, extra, "}");
    std::cout << json << std::endl;
    return 0;
  } catch (const Error& e) {
    std::cerr << "teacher_bench: " << e.what() << "\n";
    return e.kind() == ErrorKind::kUser ? 1 : 2;
  }
}
