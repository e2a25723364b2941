#include "engine/io/logit_cache.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <fstream>
#include <mutex>
#include <thread>

#include "engine/core/dtype.hpp"
#include "engine/core/sha256.hpp"

namespace refinery::io {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// Feeds the first and last MiB of a file (the whole file when it is at most 2 MiB).
void hash_file_ends(Sha256& sha, const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_user_error("cannot read ", path.string(), " to fingerprint the teacher's weights");
  const uint64_t size = std::filesystem::file_size(path);
  std::vector<char> buffer;
  auto feed = [&](uint64_t begin, uint64_t count) {
    buffer.resize(static_cast<size_t>(count));
    in.seekg(static_cast<std::streamoff>(begin));
    in.read(buffer.data(), static_cast<std::streamsize>(count));
    if (!in) throw_user_error("cannot read ", path.string(), " to fingerprint the teacher's weights");
    sha.update(buffer.data(), buffer.size());
  };
  if (size <= 2 * kMiB) {
    feed(0, size);
  } else {
    feed(0, kMiB);
    feed(size - kMiB, kMiB);
  }
}

bool is_full(const LogitCacheInfo& info) { return info.top_k == 0; }

}  // namespace

std::string teacher_fingerprint(const std::filesystem::path& model_dir) {
  Sha256 sha;
  const auto config = model_dir / "config.json";
  if (std::filesystem::is_regular_file(config)) {
    sha.update(std::string_view("config.json"));
    hash_file_ends(sha, config);
  }
  std::vector<std::filesystem::path> shards;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(model_dir, ec))
    if (entry.is_regular_file() && entry.path().extension() == ".safetensors")
      shards.push_back(entry.path());
  if (ec) throw_user_error("cannot list the model directory ", model_dir.string(), ": ", ec.message());
  std::sort(shards.begin(), shards.end());
  for (const auto& shard : shards) {
    sha.update(shard.filename().string());
    sha.update(std::to_string(std::filesystem::file_size(shard)));
    hash_file_ends(sha, shard);
  }
  return sha.hex_digest();
}

std::string data_fingerprint(std::span<const int32_t> tokens) {
  Sha256 sha;
  std::vector<uint8_t> bytes;
  bytes.reserve(tokens.size() * 4);
  for (int32_t id : tokens) {
    const auto u = static_cast<uint32_t>(id);
    for (int b = 0; b < 4; ++b) bytes.push_back(static_cast<uint8_t>(u >> (8 * b)));
  }
  sha.update(std::span<const uint8_t>(bytes));
  return sha.hex_digest();
}

std::string describe_mismatch(const LogitCacheInfo& cached, const LogitCacheInfo& wanted) {
  std::string out;
  auto differ = [&](const char* what, const std::string& a, const std::string& b) {
    if (a == b) return;
    if (!out.empty()) out += "; ";
    out += str(what, " is ", a, " in the cache but ", b, " now");
  };
  differ("the teacher fingerprint", cached.teacher_fingerprint.substr(0, 12),
         wanted.teacher_fingerprint.substr(0, 12));
  differ("top_k", std::to_string(cached.top_k), std::to_string(wanted.top_k));
  differ("the selection", cached.selection, wanted.selection);
  differ("the sample seed", std::to_string(cached.sample_seed), std::to_string(wanted.sample_seed));
  differ("vocab_size", std::to_string(cached.vocab_size), std::to_string(wanted.vocab_size));
  differ("seq_len", std::to_string(cached.seq_len), std::to_string(wanted.seq_len));
  differ("the number of sequences", std::to_string(cached.planned_sequences),
         std::to_string(wanted.planned_sequences));
  differ("the data's token ids (sha256)", cached.data_sha256.substr(0, 12),
         wanted.data_sha256.substr(0, 12));
  return out;
}

namespace {

void write_info(H5File& file, const LogitCacheInfo& info) {
  file.set_string_attribute("format", kLogitCacheFormat);
  file.set_int_attribute("format_version", kLogitCacheFormatVersion);
  file.set_string_attribute("teacher_path", info.teacher_path);
  file.set_string_attribute("teacher_fingerprint", info.teacher_fingerprint);
  file.set_string_attribute("teacher_fingerprint_method", kTeacherFingerprintMethod);
  file.set_int_attribute("top_k", info.top_k);
  file.set_int_attribute("vocab_size", info.vocab_size);
  file.set_int_attribute("seq_len", info.seq_len);
  file.set_int_attribute("planned_sequences", info.planned_sequences);
  file.set_string_attribute("data_sha256", info.data_sha256);
  if (info.top_k > 0) {
    file.set_string_attribute("selection", info.selection);
    if (info.selection == kSelectionPriority) file.set_int_attribute("sample_seed", info.sample_seed);
  }
  file.set_string_attribute("created_by", str("refinery ", REFINERY_VERSION));
}

// Reads and checks the format attributes; user errors name the file.
LogitCacheInfo read_info(const H5File& file) {
  const std::string& path = file.file_path();
  if (!file.has_attribute("format") || file.string_attribute("format") != kLogitCacheFormat)
    throw_user_error(path, " is not a refinery logit cache (its \"format\" attribute is not \"",
                     kLogitCacheFormat, "\"); make one with `refine logits`");
  const int64_t version = file.int_attribute("format_version");
  if (version != kLogitCacheFormatVersion)
    throw_user_error(path, " has logit cache format_version ", version, "; this refine reads ",
                     kLogitCacheFormatVersion, ": remake the cache with this version");
  LogitCacheInfo info;
  info.teacher_path = file.string_attribute("teacher_path");
  info.teacher_fingerprint = file.string_attribute("teacher_fingerprint");
  info.top_k = file.int_attribute("top_k");
  info.vocab_size = file.int_attribute("vocab_size");
  info.seq_len = file.int_attribute("seq_len");
  info.planned_sequences = file.int_attribute("planned_sequences");
  info.data_sha256 = file.string_attribute("data_sha256");
  if (file.has_attribute("selection")) info.selection = file.string_attribute("selection");
  if (info.selection != kSelectionTopK && info.selection != kSelectionPriority)
    throw_user_error(path, ": unknown selection \"", info.selection, "\" (this refine knows \"",
                     kSelectionTopK, "\" and \"", kSelectionPriority,
                     "\"); remake the cache with this version");
  if (info.selection == kSelectionPriority) info.sample_seed = file.int_attribute("sample_seed");
  if (info.top_k < 0 || info.vocab_size <= 0 || info.top_k > info.vocab_size || info.seq_len <= 0)
    throw_user_error(path, ": inconsistent attributes (top_k ", info.top_k, ", vocab_size ",
                     info.vocab_size, ", seq_len ", info.seq_len, "); delete the file and remake it");
  return info;
}

void check_shape(const H5Dataset& d, uint64_t row_size, const char* what) {
  if (d.row_size() != row_size || (row_size > 1 && d.rank() != 2))
    throw_user_error(d.file_path(), " ", d.name(), ": expected rows of ", row_size, " ", what,
                     ", found shape with ", d.row_size(), " per row; the cache is damaged: delete it");
}

}  // namespace

// ---- writer ---------------------------------------------------------------------------------

class LogitCacheWriter::Worker {
 public:
  enum class Kind { kBegin, kRows, kEnd, kFinish };
  struct Item {
    Kind kind;
    std::vector<int32_t> ints;  // kBegin: tokens; kRows (top-k): indices
    std::vector<float> floats;  // kRows: logits or log-probs
    uint64_t rows = 0;
  };

  Worker(const std::string& path, const LogitCacheInfo& info, const Options& options,
         int64_t& resumed)
      : info_(info),
        capacity_(std::max<size_t>(1, options.queue_items)),
        capacity_bytes_(options.queue_bytes) {
    if (std::filesystem::exists(path)) {
      resumed = open_existing(path);
    } else {
      create(path, options);
      resumed = 0;
    }
    thread_ = std::thread([this] { run(); });
  }

  ~Worker() { stop(); }

  void push(Item item) {
    std::unique_lock lock(mutex_);
    const size_t bytes = bytes_of(item);
    // Room: fewer than queue_items blocks, or more while their bytes stay within queue_bytes (a
    // batch of top-k windows is a dozen small blocks; full-vocabulary blocks are large).
    space_.wait(lock, [&] {
      return queue_.size() < capacity_ || queued_bytes_ + bytes <= capacity_bytes_ || error_ ||
             stopping_;
    });
    if (error_) std::rethrow_exception(error_);
    queued_bytes_ += bytes;
    queue_.push_back(std::move(item));
    work_.notify_one();
  }

  static size_t bytes_of(const Item& item) {
    return item.ints.size() * sizeof(int32_t) + item.floats.size() * sizeof(float);
  }

  void wait_idle() {
    std::unique_lock lock(mutex_);
    space_.wait(lock, [&] { return (queue_.empty() && !busy_) || error_; });
    if (error_) std::rethrow_exception(error_);
  }

  // The thread exits after a kFinish item or when stopping; then the file is closed here.
  void join_and_close(bool report) {
    if (thread_.joinable()) thread_.join();
    if (error_ && report) std::rethrow_exception(error_);
    logits_ = {};
    indices_ = {};
    logprobs_ = {};
    tokens_ = {};
    offsets_ = {};
    if (report)
      file_.close();
    else
      file_ = {};
  }

  std::exception_ptr error() {
    std::lock_guard lock(mutex_);
    return error_;
  }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      queue_.clear();
    }
    work_.notify_all();
    space_.notify_all();
    join_and_close(false);
  }

 private:
  void create(const std::string& path, const Options& options) {
    file_ = H5File::create(path);
    write_info(file_, info_);
    file_.set_int_attribute("complete_sequences", 0);
    file_.set_int_attribute("complete", 0);
    tokens_ = file_.create_dataset("/token_ids", DType::kI32, {{}, 0, 0, false});
    offsets_ = file_.create_dataset("/seq_offsets", DType::kI64, {{}, 0, 0, false});
    const int64_t zero = 0;
    offsets_.append(std::span<const int64_t>(&zero, 1));
    if (is_full(info_)) {
      logits_ = file_.create_dataset("/logits", DType::kF32,
                                     {{static_cast<uint64_t>(info_.vocab_size)}, options.chunk_rows});
    } else {
      const uint64_t k = static_cast<uint64_t>(info_.top_k);
      indices_ = file_.create_dataset("/indices", DType::kI32, {{k}, options.chunk_rows});
      logprobs_ = file_.create_dataset("/logprobs", DType::kF16, {{k}, options.chunk_rows});
    }
    file_.flush();
  }

  int64_t open_existing(const std::string& path) {
    try {
      file_ = H5File::open(path, /*writable=*/true);
    } catch (const Error& e) {
      throw_user_error(path, " exists but cannot be opened as a logit cache (", e.what(),
                       "); a run killed while writing can leave it damaged: delete it and run "
                       "again, or choose another --out");
    }
    const LogitCacheInfo cached = read_info(file_);
    const std::string diff = describe_mismatch(cached, info_);
    if (!diff.empty())
      throw_user_error(path, " is a logit cache made with other options (", diff,
                       "); delete it or choose another --out to make a new cache");
    const int64_t done = file_.int_attribute("complete_sequences");
    tokens_ = file_.open_dataset("/token_ids");
    offsets_ = file_.open_dataset("/seq_offsets");
    if (is_full(info_)) {
      logits_ = file_.open_dataset("/logits");
      check_shape(logits_, static_cast<uint64_t>(info_.vocab_size), "logits");
    } else {
      indices_ = file_.open_dataset("/indices");
      logprobs_ = file_.open_dataset("/logprobs");
      check_shape(indices_, static_cast<uint64_t>(info_.top_k), "indices");
      check_shape(logprobs_, static_cast<uint64_t>(info_.top_k), "log-probs");
    }
    if (done < 0 || done > info_.planned_sequences ||
        offsets_.rows() < static_cast<uint64_t>(done) + 1)
      throw_user_error(path, ": complete_sequences ", done, " does not match its /seq_offsets (",
                       offsets_.rows(), " rows); the cache is damaged: delete it and run again");
    const uint64_t rows = static_cast<uint64_t>(offsets_.read_rows<int64_t>(done, 1)[0]);
    if (tokens_.rows() < rows || (is_full(info_) ? logits_.rows() < rows
                                                 : indices_.rows() < rows || logprobs_.rows() < rows))
      throw_user_error(path, ": the datasets hold fewer rows than the ", done,
                       " committed sequences need; the cache is damaged: delete it and run again");
    // Cut back to the last commit (rows of a sequence that was being written when the run died).
    offsets_.resize(static_cast<uint64_t>(done) + 1);
    tokens_.resize(rows);
    if (is_full(info_)) {
      logits_.resize(rows);
    } else {
      indices_.resize(rows);
      logprobs_.resize(rows);
    }
    file_.set_int_attribute("complete", 0);
    file_.flush();
    next_offset_ = static_cast<int64_t>(rows);
    return done;
  }

  void run() {
    h5_silence_errors();
    while (true) {
      Item item;
      {
        std::unique_lock lock(mutex_);
        work_.wait(lock, [&] { return !queue_.empty() || stopping_; });
        if (stopping_) return;
        item = std::move(queue_.front());
        queue_.pop_front();
        queued_bytes_ -= bytes_of(item);
        busy_ = true;
      }
      space_.notify_all();
      bool done = false;
      try {
        done = write(item);
      } catch (...) {
        std::lock_guard lock(mutex_);
        error_ = std::current_exception();
      }
      {
        std::lock_guard lock(mutex_);
        busy_ = false;
      }
      space_.notify_all();
      if (done || error()) return;
    }
  }

  // Returns true after the finishing item.
  bool write(Item& item) {
    switch (item.kind) {
      case Kind::kBegin:
        open_tokens_ = std::move(item.ints);
        return false;
      case Kind::kRows:
        if (is_full(info_)) {
          logits_.append(item.floats.data(), DType::kF32, item.rows);
        } else {
          half_.resize(item.floats.size());
          for (size_t i = 0; i < item.floats.size(); ++i) half_[i] = f32_to_f16(item.floats[i]);
          indices_.append(item.ints.data(), DType::kI32, item.rows);
          logprobs_.append(half_.data(), DType::kF16, item.rows);
        }
        return false;
      case Kind::kEnd: {
        // Commit in two flushes: the rows, ids and offset reach the file first; only then is the
        // count raised (and flushed). One flush for all of them left the order to HDF5: a process
        // killed inside it could leave a count that covers rows never written (a resumed cache
        // then kept a sequence of garbage; EvalE2e.LogitsResumesAfterSigkillToTheSameCache).
        tokens_.append(std::span<const int32_t>(open_tokens_));
        next_offset_ += static_cast<int64_t>(open_tokens_.size());
        offsets_.append(std::span<const int64_t>(&next_offset_, 1));
        file_.flush();
        const int64_t committed = static_cast<int64_t>(offsets_.rows()) - 1;
        file_.set_int_attribute("complete_sequences", committed);
        file_.flush();
        return false;
      }
      case Kind::kFinish:
        file_.set_int_attribute("complete", 1);
        file_.flush();
        return true;
    }
    return false;
  }

  LogitCacheInfo info_;
  size_t capacity_;        // blocks always allowed in the queue
  size_t capacity_bytes_;  // more blocks while their bytes stay within this
  size_t queued_bytes_ = 0;
  H5File file_;
  H5Dataset tokens_, offsets_, logits_, indices_, logprobs_;
  std::vector<int32_t> open_tokens_;
  std::vector<uint16_t> half_;
  int64_t next_offset_ = 0;

  std::mutex mutex_;
  std::condition_variable work_;   // the thread waits for items
  std::condition_variable space_;  // producers wait for room / idleness
  std::deque<Item> queue_;
  bool busy_ = false;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

LogitCacheWriter::LogitCacheWriter(std::string path, LogitCacheInfo info)
    : LogitCacheWriter(std::move(path), std::move(info), Options{}) {}

LogitCacheWriter::LogitCacheWriter(std::string path, LogitCacheInfo info, Options options)
    : info_(std::move(info)) {
  if (info_.vocab_size <= 0 || info_.top_k < 0 || info_.top_k > info_.vocab_size ||
      info_.seq_len <= 0)
    throw_internal_error("LogitCacheWriter: bad info (vocab ", info_.vocab_size, ", top_k ",
                         info_.top_k, ", seq_len ", info_.seq_len, ")");
  worker_ = std::make_unique<Worker>(path, info_, options, resumed_sequences_);
  sequences_ = resumed_sequences_;
}

LogitCacheWriter::~LogitCacheWriter() = default;  // Worker's destructor stops without committing

void LogitCacheWriter::rethrow_worker_error() {
  if (auto e = worker_->error()) std::rethrow_exception(e);
}

void LogitCacheWriter::begin_sequence(std::span<const int32_t> tokens) {
  REFINERY_CHECK(!finished_ && open_rows_ < 0, "begin_sequence: a sequence is already open");
  REFINERY_CHECK(sequences_ < info_.planned_sequences, "more sequences than planned");
  Worker::Item item{Worker::Kind::kBegin, {tokens.begin(), tokens.end()}, {}, 0};
  worker_->push(std::move(item));
  open_rows_ = 0;
  open_length_ = static_cast<int64_t>(tokens.size());
}

void LogitCacheWriter::add_full(const float* logits, int64_t rows) {
  REFINERY_CHECK(info_.top_k == 0, "add_full on a top-k cache");
  REFINERY_CHECK(open_rows_ >= 0 && open_rows_ + rows <= open_length_, "add_full: bad row count");
  Worker::Item item{Worker::Kind::kRows, {}, {logits, logits + rows * info_.vocab_size},
                    static_cast<uint64_t>(rows)};
  worker_->push(std::move(item));
  open_rows_ += rows;
}

void LogitCacheWriter::add_top_k(const int32_t* indices, const float* log_probs, int64_t rows) {
  REFINERY_CHECK(info_.top_k > 0, "add_top_k on a full-logits cache");
  REFINERY_CHECK(open_rows_ >= 0 && open_rows_ + rows <= open_length_, "add_top_k: bad row count");
  const int64_t n = rows * info_.top_k;
  Worker::Item item{Worker::Kind::kRows, {indices, indices + n}, {log_probs, log_probs + n},
                    static_cast<uint64_t>(rows)};
  worker_->push(std::move(item));
  open_rows_ += rows;
}

void LogitCacheWriter::end_sequence() {
  REFINERY_CHECK(open_rows_ == open_length_, "end_sequence: ", open_rows_, " rows of ",
                 open_length_);
  worker_->push(Worker::Item{Worker::Kind::kEnd, {}, {}, 0});
  open_rows_ = -1;
  ++sequences_;
}

void LogitCacheWriter::drain() { worker_->wait_idle(); }

void LogitCacheWriter::finish() {
  REFINERY_CHECK(!finished_ && open_rows_ < 0, "finish: a sequence is still open");
  REFINERY_CHECK(sequences_ == info_.planned_sequences, "finish after ", sequences_, " of ",
                 info_.planned_sequences, " sequences");
  worker_->push(Worker::Item{Worker::Kind::kFinish, {}, {}, 0});
  finished_ = true;
  worker_->join_and_close(true);
  rethrow_worker_error();
}

// ---- reader ---------------------------------------------------------------------------------

LogitCacheReader::LogitCacheReader(const std::string& path) : path_(path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw_user_error("the logit cache ", path, " does not exist; check the path, or make it with "
                     "`refine logits`");
  try {
    file_ = H5File::open(path);
  } catch (const Error& e) {
    throw_user_error(path, " cannot be read as a logit cache (", e.what(),
                     "); if a `refine logits` run was killed while writing it, delete it and "
                     "run again");
  }
  info_ = read_info(file_);
  complete_ = file_.int_attribute("complete") == 1;
  const int64_t done = file_.int_attribute("complete_sequences");
  H5Dataset offsets = file_.open_dataset("/seq_offsets");
  if (done < 0 || offsets.rows() < static_cast<uint64_t>(done) + 1)
    throw_user_error(path, ": complete_sequences ", done, " but /seq_offsets has ", offsets.rows(),
                     " rows; the cache is damaged: delete it and remake it");
  offsets_ = offsets.read_rows<int64_t>(0, static_cast<uint64_t>(done) + 1);
  tokens_ = file_.open_dataset("/token_ids");
  uint64_t data_rows = 0;
  if (is_full(info_)) {
    logits_ = file_.open_dataset("/logits");
    check_shape(logits_, static_cast<uint64_t>(info_.vocab_size), "logits");
    data_rows = logits_.rows();
  } else {
    indices_ = file_.open_dataset("/indices");
    logprobs_ = file_.open_dataset("/logprobs");
    check_shape(indices_, static_cast<uint64_t>(info_.top_k), "indices");
    check_shape(logprobs_, static_cast<uint64_t>(info_.top_k), "log-probs");
    data_rows = std::min(indices_.rows(), logprobs_.rows());
  }
  for (size_t s = 0; s + 1 < offsets_.size(); ++s)
    if (offsets_[s + 1] < offsets_[s])
      throw_user_error(path, ": /seq_offsets decreases at ", s + 1, "; the cache is damaged");
  if (offsets_.front() != 0 || static_cast<uint64_t>(offsets_.back()) > data_rows ||
      static_cast<uint64_t>(offsets_.back()) > tokens_.rows())
    throw_user_error(path, ": /seq_offsets points past the stored rows; the cache is damaged: "
                     "delete it and remake it");
}

int64_t LogitCacheReader::sequence_length(int64_t s) const {
  if (s < 0 || s >= sequences())
    throw_user_error(path_, ": sequence ", s, " asked for, but the cache holds ", sequences());
  return offsets_[static_cast<size_t>(s) + 1] - offsets_[static_cast<size_t>(s)];
}

uint64_t LogitCacheReader::checked_row(int64_t s, int64_t row, int64_t count) const {
  const int64_t length = sequence_length(s);
  if (row < 0 || count < 0 || row + count > length)
    throw_internal_error(path_, ": rows ", row, "..", row + count, " of sequence ", s,
                         " (length ", length, ")");
  return static_cast<uint64_t>(offsets_[static_cast<size_t>(s)] + row);
}

std::vector<int32_t> LogitCacheReader::sequence_tokens(int64_t s) const {
  const uint64_t begin = checked_row(s, 0, sequence_length(s));
  return tokens_.read_rows<int32_t>(begin, static_cast<uint64_t>(sequence_length(s)));
}

void LogitCacheReader::read_full(int64_t s, int64_t row, int64_t count, float* logits) const {
  REFINERY_CHECK(is_full(info_), "read_full on a top-k cache");
  logits_.read_rows(checked_row(s, row, count), static_cast<uint64_t>(count), DType::kF32, logits);
}

void LogitCacheReader::read_top_k(int64_t s, int64_t row, int64_t count, int32_t* indices,
                                  float* log_probs) const {
  REFINERY_CHECK(!is_full(info_), "read_top_k on a full-logits cache");
  const uint64_t begin = checked_row(s, row, count);
  indices_.read_rows(begin, static_cast<uint64_t>(count), DType::kI32, indices);
  logprobs_.read_rows(begin, static_cast<uint64_t>(count), DType::kF32, log_probs);
}

}  // namespace refinery::io
