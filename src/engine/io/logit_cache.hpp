#pragma once
// The logit cache of DESIGN §5 (`refine logits` writes it; `refine eval --ref-logits` and offline
// distillation read it). One HDF5 file:
//
//   /token_ids    int32   [N]        the ids of every sequence, concatenated
//   /seq_offsets  int64   [S + 1]    sequence s is rows seq_offsets[s] .. seq_offsets[s + 1]
//   and either (top_k == 0)
//   /logits       float32 [N, V]     the teacher's raw logits (row i predicts token i + 1 of its
//                                    sequence)
//   or (top_k > 0)
//   /indices      int32   [N, k]     the k most likely next tokens, most likely first
//   /logprobs     float16 [N, k]     their log-softmax at temperature 1 (over the whole vocabulary)
//   attributes on "/":
//     format = "refinery.logits", format_version = 1, teacher_path, teacher_fingerprint,
//     teacher_fingerprint_method, top_k, vocab_size, seq_len, planned_sequences, data_sha256,
//     complete_sequences (S: rows past seq_offsets[S] are not part of the cache), complete (0/1),
//     created_by, and for top-k caches selection = "top_k" (the k most likely ids, log-softmax
//     values; the default when the attribute is absent) or "priority_sample" (a priority sample of
//     k ids per position with their self-normalized probability estimates as logprobs, see
//     engine/backend/priority_sampling.hpp; sample_seed = the seed, row key = sequence · seq_len +
//     position)
//
// Resuming: HDF5 1.10 without SWMR gives no crash consistency of its own, so the writer commits
// one sequence at a time: it appends the sequence's rows, then its tokens and offset, then sets
// complete_sequences and flushes the file. A run that dies leaves rows beyond the last commit;
// reopening with the same teacher and options cuts every dataset back to complete_sequences and
// continues there. A file damaged by the crash itself (HDF5 cannot open it) is reported with the
// advice to delete it.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/io/h5_file.hpp"

namespace refinery::io {

inline constexpr const char* kLogitCacheFormat = "refinery.logits";
inline constexpr int64_t kLogitCacheFormatVersion = 1;

inline constexpr const char* kSelectionTopK = "top_k";
inline constexpr const char* kSelectionPriority = "priority_sample";

// What a cache is for: the writer records it, resuming and readers compare it.
struct LogitCacheInfo {
  std::string teacher_path;
  std::string teacher_fingerprint;  // teacher_fingerprint(model_dir)
  int64_t top_k = 64;               // 0: full logits
  int64_t vocab_size = 0;
  int64_t seq_len = 0;              // tokens per sequence
  int64_t planned_sequences = 0;    // sequences the data yields
  std::string data_sha256;          // data_fingerprint() of every planned sequence
  std::string selection = kSelectionTopK;  // top-k caches: kSelectionTopK or kSelectionPriority
  int64_t sample_seed = 0;                 // kSelectionPriority: the sampling seed
};

// A cheap fingerprint of a model directory's weights (reading all of a 600 GiB teacher to hash it
// would take longer than caching its logits): SHA-256 over config.json and, for every
// *.safetensors file in name order, its name, its size and its first and last MiB (the first MiB
// holds the safetensors header: tensor names, dtypes, offsets). Retrained or requantized weights
// change the sampled bytes; a copy of the directory keeps the fingerprint.
std::string teacher_fingerprint(const std::filesystem::path& model_dir);
inline constexpr const char* kTeacherFingerprintMethod =
    "sha256(config.json; per *.safetensors in name order: name, size, first and last MiB)";
// SHA-256 of the sequences' ids as little-endian int32, sequence after sequence.
std::string data_fingerprint(std::span<const int32_t> tokens);

// "top_k is 64 in the cache but 32 was asked for; seq_len ..." for every field that differs (the
// teacher path is not compared: the fingerprint is); empty when they agree.
std::string describe_mismatch(const LogitCacheInfo& cached, const LogitCacheInfo& wanted);

class LogitCacheWriter {
 public:
  struct Options {
    // Blocks in flight between the producer and the writer thread: always up to queue_items,
    // more while the queued bytes stay within queue_bytes (a batch of top-k windows is 3 small
    // blocks per window; full-vocabulary blocks are hundreds of MB and stay at queue_items).
    size_t queue_items = 8;
    size_t queue_bytes = size_t{256} << 20;
    uint64_t chunk_rows = 0;   // HDF5 chunk rows of the row datasets; 0: about 1 MiB chunks
  };

  // Creates `path`, or resumes it when it holds a partial cache with the same info (fingerprint,
  // top_k, vocab_size, seq_len, planned_sequences, data_sha256). User errors: the file holds a
  // cache made with other options (the message lists the differences and says to pick another
  // --out or delete the file), or the file cannot be read (delete it).
  LogitCacheWriter(std::string path, LogitCacheInfo info);
  LogitCacheWriter(std::string path, LogitCacheInfo info, Options options);
  // Without finish(): stops the writer thread after the block it is writing and closes the file
  // without committing the open sequence: the file stays a resumable partial cache.
  ~LogitCacheWriter();
  LogitCacheWriter(const LogitCacheWriter&) = delete;
  LogitCacheWriter& operator=(const LogitCacheWriter&) = delete;

  // Sequences already in the file when it was opened (> 0 only when resuming).
  int64_t resumed_sequences() const { return resumed_sequences_; }
  // Sequences committed or queued so far (resumed ones included).
  int64_t sequences() const { return sequences_; }

  // One sequence: begin with its ids [L], add its L rows in order (in any number of blocks),
  // end. Rows are copied; the calls return once the block is queued (they wait only when the
  // queue is full: see Options).
  void begin_sequence(std::span<const int32_t> tokens);
  // logits: [rows, vocab_size] (top_k == 0 caches only).
  void add_full(const float* logits, int64_t rows);
  // indices, log_probs: [rows, top_k] (top_k > 0 caches only), most likely first.
  void add_top_k(const int32_t* indices, const float* log_probs, int64_t rows);
  void end_sequence();
  // Waits until every queued block is written (not committed); for tests that simulate a crash.
  void drain();
  // Writes everything, marks the cache complete, closes the file. Throws the writer thread's error.
  void finish();

  class Worker;  // the writer thread and its HDF5 state (logit_cache.cpp)

 private:
  void rethrow_worker_error();
  LogitCacheInfo info_;
  int64_t resumed_sequences_ = 0;
  int64_t sequences_ = 0;
  int64_t open_rows_ = -1;  // rows added to the open sequence; -1 when none is open
  int64_t open_length_ = 0;
  bool finished_ = false;
  std::unique_ptr<Worker> worker_;
};

// A read-only cache. Validates the format, attributes, dataset shapes and offsets at open.
class LogitCacheReader {
 public:
  explicit LogitCacheReader(const std::string& path);

  const std::string& path() const { return path_; }
  const LogitCacheInfo& info() const { return info_; }
  bool is_complete() const { return complete_; }
  int64_t sequences() const { return static_cast<int64_t>(offsets_.size()) - 1; }
  int64_t sequence_length(int64_t s) const;
  std::vector<int32_t> sequence_tokens(int64_t s) const;
  // Rows [row, row + count) of sequence s. Full caches: logits [count, vocab_size].
  void read_full(int64_t s, int64_t row, int64_t count, float* logits) const;
  // Top-k caches: indices [count, k], log_probs [count, k] (float16 widened to float32).
  void read_top_k(int64_t s, int64_t row, int64_t count, int32_t* indices,
                  float* log_probs) const;

 private:
  uint64_t checked_row(int64_t s, int64_t row, int64_t count) const;
  std::string path_;
  H5File file_;
  LogitCacheInfo info_;
  bool complete_ = false;
  std::vector<int64_t> offsets_;  // [S + 1], committed sequences only
  H5Dataset tokens_;
  H5Dataset logits_;    // full caches
  H5Dataset indices_;   // top-k caches
  H5Dataset logprobs_;  // top-k caches
};

}  // namespace refinery::io
